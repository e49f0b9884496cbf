"""Step ``audit``: Sample -> Sample unchanged, and a data-quality report of what passed through.

The checks (``transforms/quality/checks``) run as one ``CombineGlobally``: each bundle
aggregates its samples, the partial states merge in any order, and the report is the same on
every runner and worker count. Examples that aggregate checks name by id get their excerpts in a
second, cheap pass that decodes only those samples, read back from disk behind a barrier
(:mod:`transforms.spill`), so memory stays flat. The report is written as JSON to the run's
working directory (``audits/<step id>.json``); the runner puts it in ``manifest.json`` under
``audits`` and in ``report.html``. Every run also audits what ``write`` publishes the same way
(``manifest.json["audit"]``, policy from the spec's ``audit:`` block).

Guarantees: the step passes every sample on unchanged (ledger ``in == passed == emitted``); the
report depends only on the samples; a check over its threshold never drops a sample here (a
``block`` failure of the publish audit stops the run before anything is published).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import Field

from schemas import ArrowCodec, AuditPolicy, CheckPolicy, EvalSetSpec, Sample
from transforms.base import RecordStep, StepConfig
from transforms.files import eval_files
from transforms.quality.auditor import Auditor

if TYPE_CHECKING:
    import apache_beam as beam

AUDITS_DIR = "audits"
ROW_CODEC = ArrowCodec(Sample)
AuditRow = tuple[str, bytes]


class AuditConfig(StepConfig):
    """The checks to run and how to judge them, as the spec's ``audit:`` block."""

    checks: dict[str, CheckPolicy] = Field(default_factory=dict)
    eval_sets: list[EvalSetSpec] = Field(default_factory=list)

    def policy(self) -> AuditPolicy:
        return AuditPolicy(checks=self.checks, eval_sets=self.eval_sets)


def encode_row(sample: Sample) -> AuditRow:
    """``(id, JSON of the sample's Arrow row)``: the form ``write`` keeps its rows in."""
    row = ROW_CODEC.to_row(sample)
    return sample.id, json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_row(encoded: bytes) -> Sample:
    return ROW_CODEC.from_row(json.loads(encoded))  # type: ignore[return-value]


def _identity(sample: Sample) -> Iterator[Sample]:
    yield sample


class Audit(RecordStep):
    """Passes samples through and writes a data-quality report of them (see module docstring)."""

    type_name = "audit"
    config_model = AuditConfig
    input_type = Sample
    output_type = Sample

    def auditor(self) -> Auditor:
        """The step's auditor; its per-sample states go to the step's spill folder, if any."""
        return Auditor(self.config.policy(), self.context.base_dir, self.context.spill_dir("state"))  # type: ignore[attr-defined]

    def check(self) -> None:
        self.auditor()

    def input_files(self) -> list[str]:
        """The evaluation files of ``eval_overlap`` (fingerprinted in the manifest)."""
        return eval_files(self.config.eval_sets, self.context.base_dir)  # type: ignore[attr-defined]

    def processor(self):
        return _identity

    def expand(self, samples: beam.PCollection) -> dict[str, Any]:
        from apache_beam.io.filesystems import FileSystems

        from transforms.beam.audit import AuditSamples

        outputs = super().expand(samples)
        if self.context.output_dir is not None:
            path = FileSystems.join(self.context.output_dir, AUDITS_DIR, f"{self.step_id}.json")
            samples | "Audit" >> AuditSamples(self.auditor(), path, spill_dir=self.context.spill_dir("audit"))
        return outputs


__all__ = ["AUDITS_DIR", "Audit", "AuditConfig", "decode_row", "encode_row", "eval_files"]
