"""``decision_leak``: how well the user turn just before an assistant decision predicts it.

A *decision point* is an assistant block (consecutive assistant messages) that follows a user or
tool message, after the sample's first supervised assistant message (an unsupervised in-context
example is not a decision), and whose first decisive message is either a call (a tool call, a
tool-choice part, a ReAct action) or an answer (an answer part, a ReAct final answer, any other
plain reply). Thoughts and elicitations decide nothing; the arguments that follow a tool choice
continue that decision.

The user turn before a decision point is an *elicitation* when it follows an assistant message
that decided nothing (the assistant thought, then the user prompts it on). Only elicitations can
give a decision away: a user's request or an environment's observation carries the task and the
state, which *should* inform the decision. Each decision point gets, per feature, one value:
for an elicitation its whole text (when at most 300 characters), its first line and its last
line (when it has several lines of at most 120 characters), lowercased with whitespace
collapsed; for any other point the one value ``<no elicitation>`` (so an elicitation that only
ever precedes calls is caught too: its absence gives the answers away). A value is used only when
at least two source records give it (a record's own derivations repeat its real text).

For each feature, every decision point is predicted, leave-one-out, by the majority decision of
the *other* points with the same value (ties and unused values: the overall majority). With
``acc`` the share predicted right and ``base`` the share of the majority decision, the leak of a
feature is ``max(0, (acc - base) / (1 - base))``: 0 is no better than the base rate, 1 is always
given away. The check's share is the largest leak over the features; ``count`` is the number of
decision points it gives away beyond the base rate (the leak times the points the base rate
gets wrong).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from schemas import Message, Role, Sample
from transforms.quality.check import Check, Example, Finding, clip, is_call, record_key
from transforms.react import MARKER_PATTERN

CALL, ANSWER = 0, 1
DECISIONS = ("call", "answer")
FEATURES = ("whole", "first_line", "last_line")
#: The one feature value of every decision point that no elicitation precedes.
NOT_ELICITED = [(f, "<no elicitation>") for f in range(len(FEATURES))]
_FINAL = re.compile(
    r"^[ \t]*(?:\*\*)?Final Answer[ \t]*:|^[ \t]*(?:Action|Act|ACTION)[ \t]*:[ \t]*(?:finish|answer)\b", re.M
)
_ACTION = re.compile(r"^[ \t]*(?:\*\*)?(?:Action|Act|ACTION)[ \t]*:", re.MULTILINE)


class LeakOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_whole_chars: int = Field(300, ge=1)
    max_line_chars: int = Field(120, ge=1)


def decision_of(message: Message) -> int | None:
    """CALL, ANSWER, or ``None`` when the message decides nothing."""
    if message.part in ("thought", "arguments", "elicit"):
        return None
    if message.part == "tool" or message.tool_calls:
        return CALL
    if message.part == "answer":
        return ANSWER
    text = message.content
    if MARKER_PATTERN.search(text):
        if _FINAL.search(text):
            return ANSWER
        return CALL if _ACTION.search(text) else None
    return ANSWER


def decision_points(sample: Sample) -> Iterator[tuple[str | None, int]]:
    """``(elicitation text or None, decision)`` of each decision point of ``sample``: the text of
    the user turn before the decision when that turn is an *elicitation* (it follows an assistant
    message that decided nothing, such as a thought), else ``None``."""
    messages = sample.messages
    started = False
    i = 0
    while i < len(messages):
        if messages[i].role is not Role.ASSISTANT:
            i += 1
            continue
        j = i
        while j < len(messages) and messages[j].role is Role.ASSISTANT:
            j += 1
        block = messages[i:j]
        started = started or any(m.loss for m in block)
        before = messages[i - 1] if i > 0 else None
        if started and before is not None and before.role in (Role.USER, Role.TOOL):
            decision = next((d for d in map(decision_of, block) if d is not None), None)
            if decision is not None:
                after = messages[i - 2] if i > 1 else None
                elicited = (
                    before.role is Role.USER
                    and after is not None
                    and after.role is Role.ASSISTANT
                    and decision_of(after) is None
                    and not is_call(after)
                )
                yield (before.content if elicited else None), decision
        i = j


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def feature_values(text: str, options: LeakOptions) -> list[tuple[int, str]]:
    """``(feature index, value)`` for the features that apply to ``text``."""
    values = []
    whole = normalise(text)
    if len(whole) <= options.max_whole_chars:
        values.append((0, whole))
    lines = [line for line in (normalise(x) for x in text.splitlines()) if line]
    if len(lines) > 1:
        if len(lines[0]) <= options.max_line_chars:
            values.append((1, lines[0]))
        if len(lines[-1]) <= options.max_line_chars:
            values.append((2, lines[-1]))
    return values


def key_of(feature: int, value: str) -> int:
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, person=bytes([feature]) * 2).digest()
    return int.from_bytes(digest, "little")


@dataclass
class LeakState:
    """Decision counts overall, and per feature value: [calls, answers, smallest sample id,
    a source record it came from, whether several source records gave it]."""

    totals: list[int] = field(default_factory=lambda: [0, 0])
    keyed: list[dict[int, list]] = field(default_factory=lambda: [{} for _ in FEATURES])


def _loo_correct(own: int, other: int, majority: int, decision: int) -> bool:
    """Whether the others at a value (``own - 1`` of this decision, ``other`` of the other)
    predict ``decision``."""
    if own - 1 > other:
        return True
    if own - 1 < other:
        return False
    return decision == majority


class DecisionLeak(Check):
    name = "decision_leak"
    definition = (
        "How well the user turn just before an assistant decision (call a tool vs answer) predicts "
        "that decision, leave-one-out on its whole text, first or last line: "
        "(accuracy - base rate) / (1 - base rate); 0 = no better than the base rate, 1 = always given away."
    )
    threshold = 0.05
    severity = "block"
    Options = LeakOptions

    def new_state(self) -> LeakState:
        return LeakState()

    def observe(self, state: LeakState, sample: Sample) -> None:
        options: LeakOptions = self.options  # type: ignore[assignment]
        record = record_key(sample)
        for text, decision in decision_points(sample):
            state.totals[decision] += 1
            for feature, value in feature_values(text, options) if text is not None else NOT_ELICITED:
                entry = state.keyed[feature].setdefault(key_of(feature, value), [0, 0, sample.id, record, False])
                entry[decision] += 1
                if sample.id < entry[2]:
                    entry[2] = sample.id
                if entry[3] != record:
                    entry[4] = True

    def merge(self, state: LeakState, other: LeakState) -> LeakState:
        state.totals[0] += other.totals[0]
        state.totals[1] += other.totals[1]
        for mine, theirs in zip(state.keyed, other.keyed, strict=True):
            for key, (calls, answers, first, record, several) in theirs.items():
                entry = mine.get(key)
                if entry is None:
                    mine[key] = [calls, answers, first, record, several]
                else:
                    entry[0] += calls
                    entry[1] += answers
                    entry[2] = min(entry[2], first)
                    entry[4] = entry[4] or several or entry[3] != record
        return state

    def finish(self, state: LeakState) -> Finding:
        total = sum(state.totals)
        if total == 0:
            return Finding(0, 0, 0.0)
        majority = CALL if state.totals[CALL] >= state.totals[ANSWER] else ANSWER
        base = state.totals[majority] / total
        leaks = []
        for values in state.keyed:
            correct = 0
            unkeyed_majority = state.totals[majority]
            for calls, answers, _, _, several in values.values():
                if not several:
                    continue  # one source record's own repeats are not a template
                unkeyed_majority -= (calls, answers)[majority]
                for decision, own, other in ((CALL, calls, answers), (ANSWER, answers, calls)):
                    if own and _loo_correct(own, other, majority, decision):
                        correct += own
            accuracy = (correct + unkeyed_majority) / total
            leaks.append(max(0.0, (accuracy - base) / (1 - base)) if base < 1 else 0.0)
        best = max(range(len(FEATURES)), key=lambda f: (leaks[f], -f))
        examples = []
        ranked = sorted(
            ((c + a, key, first, c, a) for key, (c, a, first, _, several) in state.keyed[best].items() if several),
            key=lambda t: (-t[0], t[2]),
        )
        for n, key, first, calls, answers in ranked:
            if n < 2 or min(calls, answers) / n > 0.1:
                continue  # not a value that gives the decision away
            decision = DECISIONS[CALL if calls > answers else ANSWER]
            examples.append(Example(first, hint=f"{best}:{key}:{decision}:{n}"))
            if len(examples) == 5:
                break
        details = {
            "decision_points": total,
            "calls": state.totals[CALL],
            "answers": state.totals[ANSWER],
            "base_rate": round(base, 6),
            "leak_by_feature": {FEATURES[f]: round(leaks[f], 6) for f in range(len(FEATURES))},
            "feature": FEATURES[best],
        }
        given_away = round(leaks[best] * (total - state.totals[majority]))
        return Finding(given_away, total, round(leaks[best], 6), examples, details)

    def excerpt(self, sample: Sample, hint: str) -> str:
        feature, key, decision, n = hint.split(":")
        options: LeakOptions = self.options  # type: ignore[assignment]
        for text, _ in decision_points(sample):
            for f, value in feature_values(text, options) if text is not None else NOT_ELICITED:
                if f == int(feature) and key_of(f, value) == int(key):
                    return clip(f"{value!r} -> {decision} ({n} times)")
        return f"-> {decision} ({n} times)"
