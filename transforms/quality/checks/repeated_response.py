"""``repeated_response``: the same supervised answer text reused across samples of a kind.

A sample's *answer* is its last supervised reply (no tool call, not a thought, tool choice,
arguments or elicitation) with at least ``min_words`` (8) words (short factual answers such as
"The answer is no." legitimately repeat), whitespace collapsed and lowercased. Answers count once
per source record (a record repeated on purpose, e.g. by ``mix`` to reach eta, or derived
several times, gives one answer). Per kind, ``count`` adds up the answers that another record of
that kind already gave (``total - distinct``); ``share = count / total``. The check also fails when, in a kind with at
least ``min_kind_samples`` answers, one answer text covers more than ``max_top_share`` of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from schemas import Sample
from transforms.quality.check import Check, Example, Finding, clip, record_key, supervised_replies


class RepeatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_words: int = Field(8, ge=1)
    max_top_share: float = Field(0.02, ge=0.0, le=1.0)
    min_kind_samples: int = Field(50, ge=1)


def answer_of(sample: Sample, min_words: int) -> str | None:
    replies = supervised_replies(sample)
    if not replies:
        return None
    text = " ".join(replies[-1][1].content.lower().split())
    return text if len(text.split()) >= min_words else None


def answer_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass
class RepeatState:
    """Per kind: (answer key, source record key) -> smallest sample id."""

    kinds: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)


class RepeatedResponse(Check):
    name = "repeated_response"
    definition = (
        "Share of samples whose supervised answer text (last reply, >= 8 words, normalised) was "
        "already given by another sample of the same kind: total - distinct, over total. Also "
        "over its threshold when one answer covers more than max_top_share (2 %) of a kind."
    )
    threshold = 0.10
    severity = "warn"
    Options = RepeatOptions

    def new_state(self) -> RepeatState:
        return RepeatState()

    def observe(self, state: RepeatState, sample: Sample) -> None:
        text = answer_of(sample, self.options.min_words)  # type: ignore[attr-defined]
        if text is None:
            return
        answers = state.kinds.setdefault(sample.kind, {})
        key = (answer_key(text), record_key(sample))
        if key not in answers or sample.id < answers[key]:
            answers[key] = sample.id

    def merge(self, state: RepeatState, other: RepeatState) -> RepeatState:
        for kind, answers in other.kinds.items():
            mine = state.kinds.setdefault(kind, {})
            for key, first in answers.items():
                if key not in mine or first < mine[key]:
                    mine[key] = first
        return state

    def finish(self, state: RepeatState) -> Finding:
        options: RepeatOptions = self.options  # type: ignore[assignment]
        total = repeats = 0
        by_kind = {}
        tops = []
        over_top = False
        for kind in sorted(state.kinds):
            answers: dict[int, list] = {}  # answer key -> [source records, smallest sample id]
            for (key, _), first in state.kinds[kind].items():
                entry = answers.setdefault(key, [0, first])
                entry[0] += 1
                entry[1] = min(entry[1], first)
            n = sum(count for count, _ in answers.values())
            top_count = max(count for count, _ in answers.values())
            total += n
            repeats += n - len(answers)
            top_share = top_count / n
            by_kind[kind] = {
                "answers": n,
                "distinct": len(answers),
                "distinct_share": round(len(answers) / n, 6),
                "top_share": round(top_share, 6),
            }
            if n >= options.min_kind_samples and top_share > options.max_top_share:
                over_top = True
            for count, first in answers.values():
                if count > 1:
                    tops.append((-count, first, kind))
        tops.sort()
        examples = [Example(first, hint=f"{kind}:{-count}") for count, first, kind in tops[:5]]
        share = repeats / total if total else 0.0
        over = True if over_top else None
        return Finding(repeats, total, round(share, 6), examples, {"by_kind": by_kind}, over)

    def excerpt(self, sample: Sample, hint: str) -> str:
        kind, count = hint.rsplit(":", 1)
        text = answer_of(sample, self.options.min_words) or ""  # type: ignore[attr-defined]
        return clip(f"{count}x in {kind}: {text}")
