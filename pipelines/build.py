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
from pipelines import storage
from pipelines.graph import Plan
from transforms.base import LEDGER, MAIN, REJECTED
from transforms.spill import Merge, SortedGroups

LEDGER_FILE = "ledger.json"
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
    outputs: dict[tuple[str, str], beam.PCollection] = {}
    rejected, ledgers, shard_infos = [], [], None
    for planned in plan.steps:
        step = planned.instantiate(plan.spec.seed, plan.base_dir, work_dir, spill_root)
        if not planned.inputs:
            result = pipeline | step
        else:
            upstream = {(f"{i}" if p == MAIN else f"{i}.{p}"): outputs[(i, p)] for i, p in planned.inputs}
            if step.fan_in == "named":
                result = upstream | step
            elif len(upstream) == 1:
                result = next(iter(upstream.values())) | step
            else:
                spill = step.context.spill_dir("merge")
                merged = tuple(upstream.values()) | f"{planned.id}/Merge" >> Merge(spill, planned.cls.input_type)
                result = merged | step
        for port in step.output_ports():
            outputs[(planned.id, port)] = result[port]
        rejected.append(result[REJECTED] | f"Run/Rejected/Key/{planned.id}" >> beam.Map(_rejected_pair))
        ledgers.append(result[LEDGER])
        if planned is plan.sink:
            shard_infos = result[MAIN]

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
    (
        shard_infos
        | "Run/Shards/List" >> beam.combiners.ToList()
        | "Run/Shards/Write" >> beam.ParDo(_WriteJson(FileSystems.join(work_dir, SHARDS_FILE)))
    )
