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


def representative_order(samples: Iterable[Sample]) -> list[Sample]:
    """Duplicates in keep order: the first is kept (smallest id, then smallest JSON)."""
    return sorted(samples, key=lambda s: (s.id, s.model_dump_json()))


class _DedupDoFn(beam.DoFn):
    """Keeps the representative of one duplicate set and filters the rest, with the ledger."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id

    def start_bundle(self) -> None:
        self.acct = _Accounting(self.step_id)

    def process(self, element: tuple[str, Iterable[Sample]]) -> Iterator[Any]:
        key, members = element
        ordered = representative_order(members)
        kept, dropped = ordered[0], ordered[1:]
        self.acct.counts[(IN, "")] += len(ordered)
        self.acct.counts[(PASSED, "")] += 1
        self.acct.counts[(EMITTED, "")] += 1
        yield kept
        if dropped:
            self.acct.counts[(STAT, "duplicate_sets")] += 1
            detail = f"duplicate of {kept.id} (conversation key {key})"
            for sample in dropped:
                yield self.acct.rejected(FILTERED, "duplicate", detail, sample)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self.acct.flush()


class Dedup(Step):
    """Removes exact duplicate conversations, keeping the smallest id of each set."""

    type_name = "dedup"
    config_model = DedupConfig
    input_type = Sample
    output_type = Sample

    def expand(self, samples: beam.PCollection) -> dict[str, Any]:
        config: DedupConfig = self.config  # type: ignore[assignment]
        keyed = samples | "Key" >> beam.Map(lambda s: (dedup_key(s, config), s)).with_output_types(
            beam.typehints.KV[str, Sample]
        )
        outputs = (
            keyed
            | "Group" >> beam.GroupByKey()
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


__all__ = ["Dedup", "DedupConfig", "dedup_key", "normalise", "representative_order"]
