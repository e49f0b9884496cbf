"""Errors a user can act on. The CLI prints them without a traceback."""

from __future__ import annotations


class AgentmillError(Exception):
    """Base of every user-facing error."""


class SpecError(AgentmillError):
    """A spec that cannot run: bad YAML, unknown keys or types, a miswired DAG."""

    def __init__(self, path: str, message: str, step_id: str | None = None) -> None:
        self.path = path
        self.step_id = step_id
        where = f"{path}: step {step_id!r}" if step_id else path
        super().__init__(f"{where}: {message}")


class RunError(AgentmillError):
    """A run that failed or whose accounting does not add up; nothing was published."""


class OutputError(AgentmillError):
    """An output directory that cannot be written or read."""
