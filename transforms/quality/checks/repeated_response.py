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

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas import Sample
from transforms.quality.check import Check, Example, Finding, clip, record_key, supervised_replies
from transforms.quality.rows import Rows


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
    """Per kind, one row per sample with an answer: (answer key, source record key), labelled
    with the sample id (on disk when the audit has a spill folder)."""

    kinds: dict[str, Rows] = field(default_factory=dict)


def _answers(rows: Rows) -> tuple[int, int, int, list[tuple[int, str]]]:
    """Of one kind's rows: answers (one per answer and source record), distinct answers, the
    records of the most common answer, and ``(records, smallest sample id)`` of every answer
    that more than one record gives. Deletes the rows' files."""
    answers, records = rows.column(0), rows.column(1)
    order = np.lexsort((records, answers))
    by_answer, by_record = answers[order], records[order]
    del order, records
    first_of_pair = np.ones(len(by_answer), dtype=bool)  # an answer counts once per record
    first_of_pair[1:] = (by_answer[1:] != by_answer[:-1]) | (by_record[1:] != by_record[:-1])
    distinct, records_per_answer = np.unique(by_answer[first_of_pair], return_counts=True)
    del by_answer, by_record, first_of_pair
    repeated = records_per_answer > 1
    count_of = dict(zip(distinct[repeated].tolist(), records_per_answer[repeated].tolist(), strict=True))
    first = rows.smallest_labels(answers, np.isin(answers, distinct[repeated]))  # answer -> smallest id
    rows.discard()
    tops = [(count_of[key], sample_id) for key, sample_id in first.items()]
    return int(records_per_answer.sum()), len(distinct), int(records_per_answer.max()), tops


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
        rows = state.kinds.get(sample.kind)
        if rows is None:
            rows = state.kinds[sample.kind] = Rows(2, self.spill_dir())
        rows.append((answer_key(text), record_key(sample)), sample.id)

    def merge(self, state: RepeatState, other: RepeatState) -> RepeatState:
        for kind, rows in other.kinds.items():
            mine = state.kinds.get(kind)
            state.kinds[kind] = rows if mine is None else mine.merge(rows)
        return state

    def finish(self, state: RepeatState) -> Finding:
        options: RepeatOptions = self.options  # type: ignore[assignment]
        total = repeats = 0
        by_kind = {}
        tops = []
        over_top = False
        for kind in sorted(state.kinds):
            n, distinct, top_count, repeated = _answers(state.kinds[kind])
            total += n
            repeats += n - distinct
            top_share = top_count / n
            by_kind[kind] = {
                "answers": n,
                "distinct": distinct,
                "distinct_share": round(distinct / n, 6),
                "top_share": round(top_share, 6),
            }
            if n >= options.min_kind_samples and top_share > options.max_top_share:
                over_top = True
            tops += [(-count, first, kind) for count, first in repeated]
        tops.sort()
        examples = [Example(first, hint=f"{kind}:{-count}") for count, first, kind in tops[:5]]
        share = repeats / total if total else 0.0
        over = True if over_top else None
        return Finding(repeats, total, round(share, 6), examples, {"by_kind": by_kind}, over)

    def excerpt(self, sample: Sample, hint: str) -> str:
        kind, count = hint.rsplit(":", 1)
        text = answer_of(sample, self.options.min_words) or ""  # type: ignore[attr-defined]
        return clip(f"{count}x in {kind}: {text}")
