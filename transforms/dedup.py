"""Step ``dedup``: Sample -> Sample, exact duplicates removed.

Two samples are duplicates when their normalised conversations are equal: the same roles and
texts (and tool calls) in the same order, after collapsing whitespace and, by default,
lowercasing; system messages are ignored by default (a pipeline often adds the same one to
everything). Of each set of duplicates exactly one sample is kept: the one with the smallest
id (ties between equal ids are broken by the sample's JSON), so the choice does not depend on
arrival order, runner or worker count. The others are filtered as ``duplicate``, with the kept
id in the detail. Kept samples are unchanged. Stat ``duplicate_sets`` counts sets with more
than one member.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from schemas import Role, Sample, content_hash
from transforms.base import (
    EMITTED,
    FILTERED,
    IN,
    LEDGER,
    MAIN,
    PASSED,
    REJECTED,
    STAT,
    Step,
    StepConfig,
    _Accounting,
)
from transforms.coders import SampleCoder
from transforms.spill import SortedGroups

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


class DedupConfig(StepConfig):
    lowercase: bool = True
    ignore_system: bool = True
    strip_punctuation: bool = False
    include_tool_calls: bool = True


def normalise(text: str, config: DedupConfig) -> str:
    """``text`` with whitespace collapsed (and lowercased / punctuation removed if configured)."""
    if config.lowercase:
        text = text.lower()
    if config.strip_punctuation:
        text = _PUNCTUATION.sub(" ", text)
    return " ".join(text.split())


def dedup_key(sample: Sample, config: DedupConfig) -> str:
    """The hash of the sample's normalised conversation; equal keys mean duplicates."""
    parts = []
    for message in sample.messages:
        if config.ignore_system and message.role is Role.SYSTEM:
            continue
        part: list[Any] = [message.role.value, normalise(message.content, config)]
        if config.include_tool_calls and message.tool_call is not None:
            part.append(message.tool_call.model_dump(mode="json"))
        parts.append(part)
    return content_hash(parts)


DEDUP_PARTITIONS = 16  # sort partitions (parallelism of the keep pass); does not change results


class _DedupDoFn(beam.DoFn):
    """Keeps the representative of each duplicate set and filters the rest, with the ledger.

    Input: one sort partition, ``(conversation key + NUL + sample id, sample JSON)`` pairs in
    order, so each set of duplicates arrives together and in keep order."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id

    def start_bundle(self) -> None:
        self.acct = _Accounting(self.step_id)
        self.coder = SampleCoder()

    def process(self, element: tuple[int, Iterable[tuple[bytes, bytes]]]) -> Iterator[Any]:
        _, pairs = element
        for key, members in itertools.groupby(pairs, key=lambda pair: pair[0].split(b"\0", 1)[0]):
            kept = self.coder.decode(next(members)[1])
            self.acct.counts[(IN, "")] += 1
            self.acct.counts[(PASSED, "")] += 1
            self.acct.counts[(EMITTED, "")] += 1
            yield kept
            duplicates = 0
            for _, payload in members:  # noqa: B031 (the rest of the same group, after its first)
                duplicates += 1
                self.acct.counts[(IN, "")] += 1
                detail = f"duplicate of {kept.id} (conversation key {key.decode()})"
                yield self.acct.rejected(FILTERED, "duplicate", detail, self.coder.decode(payload))
            if duplicates:
                self.acct.counts[(STAT, "duplicate_sets")] += 1

    def finish_bundle(self) -> Iterator[Any]:
        yield from self.acct.flush()


def sort_pair(sample: Sample, config: DedupConfig) -> tuple[int, tuple[bytes, bytes]]:
    """``(partition, (conversation key + NUL + id, sample JSON))``: sorted, duplicates come
    together and in keep order (smallest id, then smallest JSON, first)."""
    key = dedup_key(sample, config)
    partition = int(key[:8], 16) % DEDUP_PARTITIONS
    return partition, (f"{key}\0{sample.id}".encode(), sample.model_dump_json().encode("utf-8"))


class Dedup(Step):
    """Removes exact duplicate conversations, keeping the smallest id of each set."""

    type_name = "dedup"
    config_model = DedupConfig
    input_type = Sample
    output_type = Sample

    def expand(self, samples: beam.PCollection) -> dict[str, Any]:
        config: DedupConfig = self.config  # type: ignore[assignment]
        outputs = (
            samples
            | "Key" >> beam.Map(sort_pair, config)
            | "Sort" >> SortedGroups(self.context.spill_dir("sort"))
            | "Keep" >> beam.ParDo(_DedupDoFn(self.step_id)).with_outputs(REJECTED, LEDGER, main=MAIN)
        )
        return self._typed(outputs)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        duplicates = ledger.filtered.get("duplicate", 0)
        return {
            "in": ledger.in_,
            "kept": ledger.passed,
            "duplicates": duplicates,
            "duplicate_share": round(duplicates / ledger.in_, 6) if ledger.in_ else None,
            "duplicate_sets": ledger.stats.get("duplicate_sets", 0),
        }


__all__ = ["Dedup", "DedupConfig", "dedup_key", "normalise", "sort_pair"]
