"""The contract of an audit check: a pure function on one sample plus a mergeable aggregate.

A check has a ``name``, a plain ``definition``, a default ``threshold`` and ``severity``, and an
``Options`` model for its knobs. It keeps a *state* that starts empty (:meth:`Check.new_state`),
is updated by one sample at a time (:meth:`Check.observe`), merges with another state of the same
check (:meth:`Check.merge`, associative and commutative, so bundles and workers can aggregate in
any order) and ends in a :class:`Finding` (:meth:`Check.finish`), the same whatever the order
the samples came in.

Most checks judge each sample on its own: they subclass :class:`SampleCheck` and implement
:meth:`SampleCheck.inspect`, a pure function ``Sample -> Verdict | None``. The others
(``decision_leak``, ``repeated_response``, ``near_duplicate``) aggregate over the whole data set.
Their examples name a sample id and a ``hint``; :meth:`Check.excerpt` turns the sample and the
hint into the excerpt afterwards, so a state never holds the text of every sample.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from schemas import Message, Role, Sample
from schemas.audit import EXCERPT_CHARS, MAX_EXAMPLES, EvalSetSpec, Severity

#: Message parts that are not a reply of their own (see ``schemas.sample.MessagePart``).
NON_REPLY_PARTS = {"thought", "tool", "arguments", "elicit"}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class AuditEnv:
    """What checks may need besides their options: where relative paths start, the evaluation
    sets named in the spec, and a local folder where checks that keep a row per sample may
    write their state (``None``: they keep it in memory; see :mod:`transforms.quality.rows`)."""

    base_dir: str = "."
    eval_sets: tuple[EvalSetSpec, ...] = ()
    spill_dir: str | None = None


@dataclass(frozen=True)
class Verdict:
    """A per-sample judgement: ``flagged`` or not, with an excerpt and a reason when flagged."""

    flagged: bool
    excerpt: str = ""
    reason: str = ""


@dataclass
class Example:
    id: str
    excerpt: str = ""
    hint: str | None = None  # set when the excerpt is to be made by ``Check.excerpt``


@dataclass
class Finding:
    """What a check found: ``count`` of ``total``, its ``share`` (``count / total`` unless the
    check says otherwise), examples, details, and ``over`` to override ``share > threshold``."""

    count: int
    total: int
    share: float
    examples: list[Example] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    over: bool | None = None


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def keep_smallest(examples: list[Example], limit: int = MAX_EXAMPLES) -> list[Example]:
    """The ``limit`` examples with the smallest ids (one per id): a choice independent of order."""
    seen: dict[str, Example] = {}
    for example in sorted(examples, key=lambda e: (e.id, e.excerpt)):
        seen.setdefault(example.id, example)
    return list(seen.values())[:limit]


class Check:
    """Base of every check (see the module docstring)."""

    name: ClassVar[str] = ""
    definition: ClassVar[str] = ""
    threshold: ClassVar[float] = 0.0
    severity: ClassVar[Severity] = "warn"
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | dict[str, Any] | None = None, env: AuditEnv | None = None) -> None:
        self.options = options if isinstance(options, self.Options) else self.Options.model_validate(options or {})
        self.env = env or AuditEnv()

    def __getstate__(self) -> dict[str, Any]:
        """Caches (attributes starting with ``_``) stay behind when a check is pickled to workers."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def spill_dir(self) -> str | None:
        """This check's folder under the environment's spill folder, or ``None``."""
        return None if self.env.spill_dir is None else os.path.join(self.env.spill_dir, self.name)

    def configured(self) -> bool:
        """Whether the check has what it needs to run (e.g. evaluation sets)."""
        return True

    def setup(self) -> None:
        """Load what the check needs once per worker (indexes, validators)."""

    def prefetch(self) -> None:
        """Start loading in the background what :meth:`setup` will load (see
        :meth:`transforms.base.Step.prefetch`)."""

    def new_state(self) -> Any:
        raise NotImplementedError

    def observe(self, state: Any, sample: Sample) -> None:
        raise NotImplementedError

    def merge(self, state: Any, other: Any) -> Any:
        raise NotImplementedError

    def finish(self, state: Any) -> Finding:
        raise NotImplementedError

    def excerpt(self, sample: Sample, hint: str) -> str:
        """The excerpt of an aggregate example, made from its sample and hint."""
        return hint


@dataclass
class Flags:
    """State of a per-sample check: applicable samples, flagged ones, reasons, examples."""

    total: int = 0
    count: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[Example] = field(default_factory=list)


class SampleCheck(Check):
    """A check that judges each sample on its own with :meth:`inspect`."""

    def inspect(self, sample: Sample) -> Verdict | None:
        """``None`` when the check does not apply to ``sample``, else a :class:`Verdict`."""
        raise NotImplementedError

    def new_state(self) -> Flags:
        return Flags()

    def observe(self, state: Flags, sample: Sample) -> None:
        verdict = self.inspect(sample)
        if verdict is None:
            return
        state.total += 1
        if verdict.flagged:
            state.count += 1
            if verdict.reason:
                state.reasons[verdict.reason] += 1
            state.examples.append(Example(sample.id, clip(verdict.excerpt)))
            if len(state.examples) > 4 * MAX_EXAMPLES:
                state.examples = keep_smallest(state.examples)

    def merge(self, state: Flags, other: Flags) -> Flags:
        state.total += other.total
        state.count += other.count
        state.reasons.update(other.reasons)
        state.examples = keep_smallest(state.examples + other.examples)
        return state

    def finish(self, state: Flags) -> Finding:
        details = {"reasons": dict(sorted(state.reasons.items()))} if state.reasons else {}
        share = state.count / state.total if state.total else 0.0
        return Finding(state.count, state.total, share, keep_smallest(state.examples), details)


# --- helpers shared by checks ----------------------------------------------------------------


def supervised_replies(sample: Sample) -> list[tuple[int, Message]]:
    """``(index, message)`` of supervised assistant messages that are replies in their own
    right: no tool call, not a thought, tool choice, arguments or elicitation part."""
    return [
        (i, m)
        for i, m in enumerate(sample.messages)
        if m.role is Role.ASSISTANT and m.loss and not m.tool_calls and m.part not in NON_REPLY_PARTS
    ]


def first_supervised(sample: Sample) -> int | None:
    """Index of the first supervised assistant message (what comes before is the prompt)."""
    return next((i for i, m in enumerate(sample.messages) if m.role is Role.ASSISTANT and m.loss), None)


def record_key(sample: Sample) -> int:
    """64-bit key of the sample's source record (source and source id): the derivations and
    repeats of one trajectory share it."""
    text = f"{sample.lineage.source}\x00{sample.lineage.source_id}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def is_call(message: Message) -> bool:
    """Whether an assistant message makes (or names) a call: a structured call, a tool-choice or
    arguments part, or a ReAct ``Action:`` line."""
    if message.role is not Role.ASSISTANT:
        return False
    if message.tool_calls or message.part in ("tool", "arguments"):
        return True
    return bool(_ACTION_LINE.search(message.content))


_ACTION_LINE = re.compile(r"^[ \t]*(?:Action|ACTION|Act)[ \t]*:", re.MULTILINE)


def preceding_query(sample: Sample, index: int) -> Message | None:
    """The nearest user message before ``index`` that asks something: not an elicitation turn and
    not an observation (a user message right after an assistant call)."""
    messages = sample.messages
    for k in range(index - 1, -1, -1):
        message = messages[k]
        if message.role is not Role.USER or message.part == "elicit":
            continue
        if k > 0 and is_call(messages[k - 1]):
            continue
        return message
    return None
