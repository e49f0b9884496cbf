"""Step ``trim_closings``: Trajectory -> Trajectory, a trailing thanks / you're-welcome exchange
removed (or taken out of the loss).

glaive ends one conversation in seven (57 of 396) with the user thanking ("Thank you for
your help!") and the assistant answering with the same sentence every time ("You're welcome! If
you have any other questions, feel free to ask."; in Chinese a handful of near-identical ones). Supervised, it
is the single most repeated answer of the agent data (the audit's ``repeated_response``): a
model learns the sentence, and ``instruction_pairs`` even makes format exercises of it
("Final Answer: You're welcome! ..."). The exchange carries nothing of the task, so it is cut
before the trajectory fans out into chat, aligned and instruction samples.

A **closing exchange** is the last two turns of a trajectory when

- the user turn thanks or takes leave (a ``thanks`` pattern) and asks for nothing more (no
  ``request`` pattern: a question mark, "can you", "please", 吗 ...), in at most
  ``max_user_chars`` characters;
- the assistant turn makes no call, opens with an acknowledgement ("You're welcome", "My
  pleasure", 不客气 ...) and has at most ``max_reply_chars`` characters;
- the turn before them is an assistant answer (text, no call): the task ended there, so the
  trajectory still ends with the assistant's answer once the exchange is gone.

The patterns are data (``templates/quality/closings.yaml``); a config adds to them or replaces
them. Guarantees:

- ``mode: trim`` (default): closing exchanges are removed from the end, repeatedly (a thanks, then
  a goodbye); ``mode: mask``: they stay, the replies get ``loss: false``.
- Nothing else changes: the other turns, tools, task, reward and metadata are kept; the id is
  recomputed from the new turns (:func:`schemas.trajectory_id`), so it is the id the source record
  would have without the exchange. A trajectory without a closing exchange passes unchanged.
- A trajectory that holds nothing but closing exchanges never loses its turns (the rule needs an
  answer before the exchange).
- Stats: ``trimmed`` / ``masked`` (trajectories), ``exchanges`` (exchanges removed or masked),
  ``source:<source>`` (trajectories changed per source). Deterministic: a pure function of the
  trajectory and the config.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from schemas import Role, Trajectory, Turn, trajectory_id
from transforms.base import RecordStep, Stat, StepConfig, check_regexes

BUILTIN = "quality/closings.yaml"
LISTS = ("thanks", "request", "acknowledgement")


@functools.cache
def _builtin() -> dict[str, Any]:
    from transforms.phrasing import builtin_text

    return yaml.safe_load(builtin_text(BUILTIN))


@dataclass(frozen=True)
class ClosingRules:
    """Compiled closing-exchange rules (see the module docstring)."""

    thanks: re.Pattern[str]
    request: re.Pattern[str]
    acknowledgement: re.Pattern[str]
    max_user_chars: int
    max_reply_chars: int

    def is_thanks(self, turn: Turn) -> bool:
        text = turn.text.strip()
        return (
            turn.role is Role.USER
            and 0 < len(text) <= self.max_user_chars
            and self.thanks.search(text) is not None
            and self.request.search(text) is None
        )

    def is_acknowledgement(self, turn: Turn) -> bool:
        text = turn.text.strip().lstrip("\"'“‘ ")
        return (
            turn.role is Role.ASSISTANT
            and not turn.tool_calls
            and 0 < len(text) <= self.max_reply_chars
            and self.acknowledgement.match(text) is not None
        )

    @staticmethod
    def is_answer(turn: Turn) -> bool:
        return turn.role is Role.ASSISTANT and not turn.tool_calls and bool(turn.text.strip())

    def closing_start(self, turns: list[Turn]) -> int:
        """Index of the first turn of the trailing closing exchanges (``len(turns)`` if none)."""
        end = len(turns)
        while (
            end >= 3
            and self.is_acknowledgement(turns[end - 1])
            and self.is_thanks(turns[end - 2])
            and self.is_answer(turns[end - 3])
        ):
            end -= 2
        return end


def closing_rules(
    extra: dict[str, list[str]] | None = None,
    replace: bool = False,
    max_user_chars: int | None = None,
    max_reply_chars: int | None = None,
) -> ClosingRules:
    """The built-in rules plus ``extra`` patterns per list (or only ``extra`` with ``replace``);
    the limits, when given, replace the file's. ``ValueError`` names a pattern that does not
    compile."""
    data = _builtin()
    compiled = {}
    for name in LISTS:
        patterns = [*([] if replace else data[name]), *(extra or {}).get(name, [])]
        try:
            check_regexes(patterns)
        except ValueError as exc:
            raise ValueError(f"a {name} pattern does not compile: {exc}") from None
        # No pattern matches nothing (an empty alternation would match everything).
        compiled[name] = re.compile("|".join(f"(?:{p})" for p in patterns) or r"(?!)", re.IGNORECASE)
    return ClosingRules(
        **compiled,
        max_user_chars=max_user_chars or data["max_user_chars"],
        max_reply_chars=max_reply_chars or data["max_reply_chars"],
    )


class TrimClosingsConfig(StepConfig):
    """Config of ``trim_closings``."""

    mode: Literal["trim", "mask"] = "trim"
    #: Extra patterns per list (``thanks``, ``request``, ``acknowledgement``).
    patterns: dict[Literal["thanks", "request", "acknowledgement"], list[str]] = Field(default_factory=dict)
    replace: bool = False
    max_user_chars: int | None = Field(None, ge=1)
    max_reply_chars: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _compiles(self) -> TrimClosingsConfig:
        self.rules()  # a pattern that does not compile is a config error, before anything runs
        return self

    def rules(self) -> ClosingRules:
        return closing_rules(dict(self.patterns), self.replace, self.max_user_chars, self.max_reply_chars)


class TrimClosingsFn:
    """Picklable processor (see the module docstring)."""

    def __init__(self, config: TrimClosingsConfig) -> None:
        self.config = config
        self.rules: ClosingRules | None = None

    def setup(self) -> None:
        self.rules = self.config.rules()

    def __call__(self, trajectory: Trajectory) -> Iterator[Any]:
        if self.rules is None:
            self.setup()
        assert self.rules is not None
        turns = trajectory.turns
        start = self.rules.closing_start(turns)
        if start == len(turns):
            yield trajectory
            return
        if self.config.mode == "trim":
            kept = turns[:start]
        else:
            closing = [t.model_copy(update={"loss": False}) if t.role is Role.ASSISTANT else t for t in turns[start:]]
            kept = [*turns[:start], *closing]
        yield Stat("trimmed" if self.config.mode == "trim" else "masked", 1)
        yield Stat("exchanges", (len(turns) - start) // 2)
        yield Stat(f"source:{trajectory.source}", 1)
        yield trajectory.model_copy(
            update={"turns": kept, "id": trajectory_id(trajectory.source, trajectory.source_id, kept)}
        )


class TrimClosings(RecordStep):
    """Removes (or masks) a trailing thanks / you're-welcome exchange."""

    type_name = "trim_closings"
    config_model = TrimClosingsConfig
    input_type = Trajectory
    output_type = Trajectory

    def processor(self) -> TrimClosingsFn:
        return TrimClosingsFn(self.config)  # type: ignore[arg-type]

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        assert isinstance(config, TrimClosingsConfig)
        return {
            "mode": config.mode,
            "in": ledger.in_,
            "changed": ledger.stats.get("trimmed", 0) + ledger.stats.get("masked", 0),
            "exchanges": ledger.stats.get("exchanges", 0),
            "by_source": {k.split(":", 1)[1]: v for k, v in sorted(ledger.stats.items()) if k.startswith("source:")},
        }


__all__ = ["ClosingRules", "TrimClosings", "TrimClosingsConfig", "closing_rules"]
