"""Plan -> Beam DAG: apply each step in topological order and wire in the run artifacts.

Besides the dataset shards (written by the ``write`` step), every run writes into its working
directory: ``ledger.json`` (the summed per-step accounting), ``rejected/<step>.jsonl`` (every
filtered record and dead letter, sorted) and ``shards.json`` (what each shard holds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

import transforms.coders  # noqa: F401  (registers the record coders)
from pipelines import beam_speed, storage
from pipelines.graph import Plan
from transforms.audit import AuditSamples
from transforms.base import LEDGER, MAIN, REJECTED
from transforms.quality.auditor import Auditor
from transforms.spill import Merge, SortedGroups
from transforms.write import AUDIT_ROWS

LEDGER_FILE = "ledger.json"
AUDIT_FILE = "audit.json"
SHARDS_FILE = "shards.json"
REJECTED_DIR = "rejected"


class _WriteJson(beam.DoFn):
    def __init__(self, path: str) -> None:
        self.path = path

    def process(self, items: list[Any]) -> None:
        storage.write_text(self.path, json.dumps(sorted(items), ensure_ascii=False))


class _WriteRejected(beam.DoFn):
    """Writes one step's rejected records, sorted, as ``rejected/<step>.jsonl``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def process(self, element: tuple[str, Iterable[tuple[bytes, bytes]]]) -> None:
        step_id, lines = element
        with FileSystems.create(FileSystems.join(self.directory, f"{step_id}.jsonl")) as handle:
            for line, _ in lines:
                handle.write(line + b"\n")


def _rejected_pair(element: tuple[str, str]) -> tuple[str, tuple[bytes, bytes]]:
    step_id, line = element
    return step_id, (line.encode("utf-8"), b"")


def build(pipeline: beam.Pipeline, plan: Plan, work_dir: str, spill_root: str | None = None) -> None:
    """Add the plan's steps and the run artifacts to ``pipeline``. With a ``spill_root``, records
    that cross a stage boundary (merged inputs, sorts, count-then-select) go through files there,
    so memory stays flat with the data size (see :mod:`transforms.spill`)."""
    beam_speed.apply()  # Beam's per-transform introspection, memoized (pipelines/beam_speed.py)
    outputs: dict[tuple[str, str], beam.PCollection] = {}
    rejected, ledgers, shard_infos = [], [], None
    published = audit_rows = None
    for planned in plan.steps:
        step = planned.instantiate(plan.spec.seed, plan.base_dir, work_dir, spill_root)
        step_input = None
        if not planned.inputs:
            result = pipeline | step
        else:
            upstream = {(f"{i}" if p == MAIN else f"{i}.{p}"): outputs[(i, p)] for i, p in planned.inputs}
            if step.fan_in == "named":
                result = upstream | step
            elif len(upstream) == 1:
                step_input = next(iter(upstream.values()))
                result = step_input | step
            else:
                spill = step.context.spill_dir("merge")
                step_input = tuple(upstream.values()) | f"{planned.id}/Merge" >> Merge(spill, planned.cls.input_type)
                result = step_input | step
        for port in step.output_ports():
            outputs[(planned.id, port)] = result[port]
        rejected.append(result[REJECTED] | f"Run/Rejected/Key/{planned.id}" >> beam.Map(_rejected_pair))
        ledgers.append(result[LEDGER])
        if planned is plan.sink:
            shard_infos = result[MAIN]
            published, audit_rows = step_input, result.get(AUDIT_ROWS)

    (
        tuple(ledgers)
        | "Run/Ledger/Merge" >> beam.Flatten()
        | "Run/Ledger/Sum" >> beam.CombinePerKey(sum)
        | "Run/Ledger/List" >> beam.combiners.ToList()
        | "Run/Ledger/Write" >> beam.ParDo(_WriteJson(FileSystems.join(work_dir, LEDGER_FILE)))
    )
    rejected_spill = None if spill_root is None else FileSystems.join(spill_root, "run", "rejected")
    (
        tuple(rejected)
        | "Run/Rejected/Sort" >> SortedGroups(rejected_spill)
        | "Run/Rejected/Write" >> beam.ParDo(_WriteRejected(FileSystems.join(work_dir, REJECTED_DIR)))
    )
    if plan.spec.audit.enabled and published is not None:
        auditor = Auditor(plan.spec.audit, plan.base_dir)
        spill = None if spill_root is None else FileSystems.join(spill_root, "run", "audit")
        published | "Run/Audit" >> AuditSamples(auditor, FileSystems.join(work_dir, AUDIT_FILE), audit_rows, spill)
    (
        shard_infos
        | "Run/Shards/List" >> beam.combiners.ToList()
        | "Run/Shards/Write" >> beam.ParDo(_WriteJson(FileSystems.join(work_dir, SHARDS_FILE)))
    )
