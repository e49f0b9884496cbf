"""The Beam side of the audit (:mod:`transforms.audit`, and the audit of what every run
publishes): the checks as one combine, and the excerpt pass that writes the report."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas import AuditReport, Sample
from transforms.audit import AuditRow, decode_row, encode_row
from transforms.beam.singletons import combined_singleton
from transforms.quality.auditor import Auditor, Pending
from transforms.spill import Merge


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


class WriteReport(beam.DoFn):
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
        examples = combined_singleton(picked, beam.combiners.ToListCombineFn(), "Examples")
        return result | "Write" >> beam.ParDo(WriteReport(self.auditor, self.path), examples)
