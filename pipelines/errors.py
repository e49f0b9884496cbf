"""Errors a user can act on. The CLI prints them without a traceback."""

from __future__ import annotations

from schemas.rejected import clip

#: The longest message an error shows; the rest is cut with a note of how much (a spec can make
#: a validator echo megabytes of input).
MESSAGE_LIMIT = 2_000


class AgentmillError(Exception):
    """Base of every user-facing error. Its text is at most :data:`MESSAGE_LIMIT` characters."""

    def __str__(self) -> str:
        return clip(super().__str__(), MESSAGE_LIMIT)


class SpecError(AgentmillError):
    """A spec that cannot run: bad YAML, unknown keys or types, a miswired DAG."""

    def __init__(self, path: str, message: str, step_id: str | None = None) -> None:
        self.path = path
        self.step_id = step_id
        where = f"{path}: step {step_id!r}" if step_id else path
        super().__init__(f"{where}: {message}")


class StepError(AgentmillError):
    """A step's own code failed: its class could not be created, its ``expand`` returned no
    outputs dict, or its processor broke the step contract (a bug in a custom step, named with
    the step id and type; nothing was published)."""


class RunError(AgentmillError):
    """A run that failed or whose accounting does not add up; nothing was published."""


class OutputError(AgentmillError):
    """An output directory that cannot be written or read."""
