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
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from pydantic import Field

from schemas import ArrowCodec, AuditPolicy, AuditReport, CheckPolicy, EvalSetSpec, Sample
from transforms.base import RecordStep, StepConfig
from transforms.quality.auditor import Auditor, Pending
from transforms.spill import Merge

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


class AuditCombineFn(beam.CombineFn):
    """The auditor's states as a Beam combiner; the output is ``(report JSON, pending)``."""

    def __init__(self, auditor: Auditor) -> None:
        self.auditor = auditor

    def setup(self) -> None:
        self.auditor.setup()

    def create_accumulator(self) -> dict[str, Any]:
        return self.auditor.new_state()

    def add_input(self, state: dict[str, Any], sample: Sample) -> dict[str, Any]:
        return self.auditor.observe(state, sample)

    def merge_accumulators(self, states: Iterable[dict[str, Any]]) -> dict[str, Any]:
        states = iter(states)
        merged = next(states)
        for other in states:
            merged = self.auditor.merge(merged, other)
        return merged

    def extract_output(self, state: dict[str, Any]) -> tuple[str, Pending]:
        report, pending = self.auditor.finish(state)
        return report.model_dump_json(), pending


def _pick(row: AuditRow, result: tuple[str, Pending]) -> Iterator[bytes]:
    sample_id, encoded = row
    if sample_id in result[1]:
        yield encoded


class _WriteReport(beam.DoFn):
    def __init__(self, auditor: Auditor, path: str) -> None:
        self.auditor = auditor
        self.path = path

    def process(self, result: tuple[str, Pending], picked: list[bytes]) -> None:
        report = AuditReport.model_validate_json(result[0])
        self.auditor.fill_excerpts(report, result[1], (decode_row(e) for e in sorted(picked)))
        with FileSystems.create(self.path) as handle:
            handle.write(report.model_dump_json(indent=2).encode("utf-8"))


class AuditCheck(beam.PTransform):
    """Samples -> the singleton ``(report JSON, pending)``: the checks' result, before excerpts."""

    def __init__(self, auditor: Auditor, label: str | None = None) -> None:
        super().__init__(label)
        self.auditor = auditor

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        return samples | "Combine" >> beam.CombineGlobally(AuditCombineFn(self.auditor))


class AuditSamples(beam.PTransform):
    """Audits a PCollection of samples and writes the report as JSON to ``path``.

    ``checked`` and ``picked`` may give the result of :class:`AuditCheck` on these samples and
    the rows (JSON) of the samples its ``pending`` names, picked by whoever reads the samples
    anyway (``write``; see :meth:`transforms.write.Write.pick_for_audit`); otherwise the samples
    are checked here, encoded and spilled to ``spill_dir`` for the excerpt pass (``None``:
    Beam's own materialization).
    """

    def __init__(
        self,
        auditor: Auditor,
        path: str,
        spill_dir: str | None = None,
        checked: beam.PCollection | None = None,
        picked: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        self.auditor = auditor
        self.path = path
        self.spill_dir = spill_dir
        self.checked = checked
        self.picked = picked

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        result = self.checked if self.checked is not None else samples | "Check" >> AuditCheck(self.auditor)
        picked = self.picked
        if picked is None:
            encoded = samples | "Encode" >> beam.Map(encode_row).with_output_types(beam.typehints.Tuple[str, bytes])
            rows = encoded | "AwaitReport" >> Merge(self.spill_dir, beam.typehints.Tuple[str, bytes])
            picked = rows | "Pick" >> beam.FlatMap(_pick, beam.pvalue.AsSingleton(result)).with_output_types(bytes)
        examples = picked | "Examples" >> beam.combiners.ToList()
        return result | "Write" >> beam.ParDo(_WriteReport(self.auditor, self.path), beam.pvalue.AsSingleton(examples))


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
        outputs = super().expand(samples)
        if self.context.output_dir is not None:
            path = FileSystems.join(self.context.output_dir, AUDITS_DIR, f"{self.step_id}.json")
            samples | "Audit" >> AuditSamples(self.auditor(), path, spill_dir=self.context.spill_dir("audit"))
        return outputs


def eval_files(eval_sets: list[EvalSetSpec], base_dir: str) -> list[str]:
    """Every file of ``eval_sets``, resolved against ``base_dir``."""
    from transforms.files import resolve_paths

    return sorted({path for s in eval_sets for path in resolve_paths(s.paths, base_dir)})
