"""Two custom agentmill steps, the worked example of docs/extending.md.

- ``DropLongSamples``: a :class:`RecordStep`. Its business logic is a plain, picklable callable
  on one ``Sample`` that yields the sample, a ``Filtered`` reason or ``Stat`` counts, or raises
  ``RecordError`` (a dead letter). The base class adds the ledger and the rejected records.
- ``TakeExactly``: a step with its own ``expand``: it counts, then selects. A keyed-hash rank of
  every sample id is computed, the ``count`` smallest ranks are drawn, and the drawn ids reach
  the per-record function as a side input. Same seed and inputs, same selection, on any runner.

Use them from a spec by dotted path (the module must be importable on every worker):

    PYTHONPATH=docs/examples .venv/bin/agentmill run docs/examples/drop_long.yaml --output /tmp/x
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import apache_beam as beam
from pydantic import Field

from schemas import Sample
from transforms.base import (
    LEDGER,
    MAIN,
    REJECTED,
    Filtered,
    RecordError,
    RecordStep,
    Stat,
    Step,
    StepConfig,
    StepContext,
)
from transforms.beam.records import RecordDoFn
from transforms.sampling import rank_key
from transforms.spill import Merge

# --- DropLongSamples: a RecordStep ------------------------------------------------------------


class DropLongConfig(StepConfig):
    """Config of ``DropLongSamples``; unknown keys are errors (``StepConfig`` forbids extras)."""

    max_tokens: int = Field(2048, ge=1)
    unit: Literal["tokens", "supervised_tokens"] = "tokens"


class DropLong:
    """The pure, picklable function behind the step: unit-testable without Beam."""

    def __init__(self, config: DropLongConfig, context: StepContext) -> None:
        self.config = config
        self.context = context

    def __call__(self, sample: Sample) -> Iterator[Any]:
        if not sample.messages:
            raise RecordError("empty_sample", "the sample has no messages")  # -> a dead letter
        size = getattr(sample.counts, self.config.unit)
        if size > self.config.max_tokens:
            yield Filtered("too_long", f"{size} {self.config.unit} > {self.config.max_tokens}")
            return
        yield Stat("kept_tokens", sample.counts.tokens)  # an integer sum in the manifest's ledger
        lineage = sample.lineage.model_copy(update={"steps": [*sample.lineage.steps, self.context.step_id]})
        yield sample.model_copy(update={"lineage": lineage})


class DropLongSamples(RecordStep):
    """Drops samples longer than ``max_tokens`` (whitespace tokens from ``Sample.counts``)."""

    type_name = "drop_long"
    config_model = DropLongConfig
    input_type = Sample
    output_type = Sample

    def processor(self) -> DropLong:
        return DropLong(self.config, self.context)


# --- TakeExactly: count, then select ----------------------------------------------------------


class TakeConfig(StepConfig):
    count: int = Field(ge=0)


class Select:
    """Keeps a sample iff its id was drawn; the drawn ids arrive as the side input ``selected``."""

    def __init__(self) -> None:
        self._ids: list[str] | None = None
        self._set: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"_ids": None, "_set": set()}

    def __call__(self, sample: Sample, selected: list[str]) -> Iterator[Any]:
        if selected is not self._ids:  # build the set once per side-input value, not per record
            self._ids, self._set = selected, set(selected)
        if sample.id not in self._set:
            # A draw loser is unchanged input: account for it by id, without copying it.
            yield Filtered("not_selected", f"not among the {len(selected)} drawn samples", keep_payload=False)
            return
        yield sample


class TakeExactly(Step):
    """Keeps exactly ``min(count, inputs)`` samples, drawn by keyed hash of (seed, step id, id)."""

    type_name = "take_exactly"
    config_model = TakeConfig
    input_type = Sample
    output_type = Sample

    def expand(self, samples: beam.PCollection) -> dict[str, Any]:
        seed, step_id, count = self.context.seed, self.context.step_id, self.config.count
        if count == 0:
            drawn = samples.pipeline | "NoDraw" >> beam.Create([[]])
        else:
            drawn = (
                samples
                | "Rank" >> beam.Map(lambda s: (rank_key(seed, step_id, s.id), s.id))
                | "Draw" >> beam.combiners.Top.Smallest(count)
                | "Ids" >> beam.Map(lambda ranked: sorted(sample_id for _, sample_id in ranked))
            )
        # The samples wait for the draw on disk, not in the runner's memory.
        waiting = samples | "AwaitDraw" >> Merge(self.context.spill_dir("records"), Sample)
        outputs = waiting | "Select" >> beam.ParDo(
            RecordDoFn(Select(), step_id), selected=beam.pvalue.AsSingleton(drawn)
        ).with_outputs(REJECTED, LEDGER, main=MAIN)
        return self._typed(outputs)
