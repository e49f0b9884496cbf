"""Plan -> Beam DAG: apply each step in topological order and wire in the run artifacts.

Besides the dataset shards (written by the ``write`` step), every run writes into its working
directory: ``ledger.json`` (the summed per-step accounting), ``rejected/<step>.jsonl`` (every
filtered record and dead letter, sorted) and ``shards.json`` (what each shard holds).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

import transforms.coders  # noqa: F401  (registers the record coders)
from pipelines import beam_speed, storage
from pipelines.errors import AgentmillError, StepError
from pipelines.graph import Plan, PlannedStep
from schemas import StepLedger
from transforms.base import LEDGER, MAIN, REJECTED, STEP_CONTRACT
from transforms.beam.audit import AuditCheck, AuditSamples
from transforms.quality.auditor import Auditor
from transforms.spill import Merge, SortedGroups
from transforms.write import AUDIT_ROWS, Write

LEDGER_FILE = "ledger.json"
AUDIT_FILE = "audit.json"
SHARDS_FILE = "shards.json"
REJECTED_DIR = "rejected"


class _WriteJson(beam.DoFn):
    def __init__(self, path: str) -> None:
        self.path = path

    def process(self, items: list[Any]) -> None:
        storage.write_text(self.path, json.dumps(sorted(items), ensure_ascii=False))


class _SumLedger(beam.CombineFn):
    """Ledger entries ``((step, category, reason), n)`` -> the list of their sums per key: one
    combine (no per-key grouping, no default for an empty run: no entries, no file)."""

    def create_accumulator(self) -> dict[Any, int]:
        return {}

    def add_input(self, sums: dict[Any, int], entry: tuple[Any, int]) -> dict[Any, int]:
        key, n = entry
        sums[key] = sums.get(key, 0) + n
        return sums

    def merge_accumulators(self, accumulators: Iterable[dict[Any, int]]) -> dict[Any, int]:
        merged: dict[Any, int] = {}
        for sums in accumulators:
            for key, n in sums.items():
                merged[key] = merged.get(key, 0) + n
        return merged

    def extract_output(self, sums: dict[Any, int]) -> list[tuple[Any, int]]:
        return list(sums.items())  # _WriteJson sorts what it writes


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


def _describe(planned: PlannedStep) -> str:
    return f"step {planned.id!r} ({planned.spec.type})"


@contextlib.contextmanager
def _step_code(planned: PlannedStep) -> Iterator[None]:
    """Turns an exception raised by a step's own ``expand`` (or its ``processor()``) into a
    :class:`StepError` naming the step; the original stays the cause (``--debug``)."""
    try:
        yield
    except AgentmillError:
        raise
    except Exception as exc:
        raise StepError(
            f"{_describe(planned)} failed while building the pipeline: {type(exc).__name__}: {exc}"
        ) from exc


def _check_outputs(planned: PlannedStep, step: Any, result: Any) -> None:
    """A step's ``expand`` must return a dict with its main output (if it has one), each extra
    port, the rejected records and the ledger."""
    if not isinstance(result, dict):
        raise StepError(
            f"{_describe(planned)}: its expand returned a {type(result).__name__}, not a dict of outputs "
            "(see transforms.base.Step)"
        )
    needed = [*step.output_ports(), REJECTED, LEDGER]
    missing = [port for port in needed if port not in result]
    if missing:
        raise StepError(f"{_describe(planned)}: its expand returned no output for {', '.join(map(repr, missing))}")


def check_step_contracts(plan: Plan, ledgers: dict[str, StepLedger], work_dir: str) -> None:
    """Raise :class:`StepError` when a step broke the step contract on any record (dead letters
    ``step_contract``, see :class:`transforms.beam.records.RecordDoFn`): a bug in the step, so the run is
    refused, naming the step, how many records, and the first one's detail from ``rejected/``."""
    for planned in plan.steps:
        count = ledgers[planned.id].dead_letter.get(STEP_CONTRACT, 0)
        if not count:
            continue
        detail = ""
        with contextlib.suppress(OSError, ValueError):
            path = FileSystems.join(work_dir, REJECTED_DIR, f"{planned.id}.jsonl")
            for line in storage.read_text(path).splitlines():
                entry = json.loads(line)
                if entry.get("reason") == STEP_CONTRACT:
                    detail = f": {entry.get('detail', '')}"
                    break
        raise StepError(
            f"{_describe(planned)} broke the step contract on {count} of {ledgers[planned.id].in_} record(s)"
            f"{detail}; nothing was published"
        )


def prefetch(plan: Plan) -> None:
    """Start loading, on background threads, what the plan's steps and audit checks will load
    in their workers' set-up (:mod:`transforms.background`). Call it only when the workers run in
    this process or are forked from it, before :func:`build`, so the loads overlap with it."""
    for planned in plan.steps:
        planned.cls.prefetch(planned.config)
    if plan.spec.audit.enabled:
        Auditor(plan.spec.audit, plan.base_dir).prefetch()


def build(pipeline: beam.Pipeline, plan: Plan, work_dir: str, spill_root: str | None = None) -> None:
    """Add the plan's steps and the run artifacts to ``pipeline``. With a ``spill_root``, records
    that cross a stage boundary (merged inputs, sorts, count-then-select) go through files there,
    so memory stays flat with the data size (see :mod:`transforms.spill`)."""
    beam_speed.apply()  # Beam's per-transform introspection, memoized (pipelines/beam_speed.py)
    outputs: dict[tuple[str, str], beam.PCollection] = {}
    rejected, ledgers, shard_infos = [], [], None
    published = audit_check = audit_rows = None
    audit_state = None if spill_root is None else FileSystems.join(spill_root, "run", "audit_state")
    auditor = Auditor(plan.spec.audit, plan.base_dir, audit_state) if plan.spec.audit.enabled else None
    for planned in plan.steps:
        step = planned.instantiate(plan.spec.seed, plan.base_dir, work_dir, spill_root)
        step_input = None
        with _step_code(planned):
            if not planned.inputs:
                result = pipeline | step.ptransform()
            else:
                upstream = {(f"{i}" if p == MAIN else f"{i}.{p}"): outputs[(i, p)] for i, p in planned.inputs}
                if step.fan_in == "named":
                    result = upstream | step.ptransform()
                else:
                    if len(upstream) == 1:
                        step_input = next(iter(upstream.values()))
                    else:
                        spill = step.context.spill_dir("merge")
                        merge = Merge(spill, planned.cls.input_type, barrier=False)
                        step_input = tuple(upstream.values()) | f"{planned.id}/Merge" >> merge
                    if planned is plan.sink and auditor is not None and isinstance(step, Write):
                        # The audit's checks run beside write's encoding; write picks the rows
                        # the excerpts need as it writes them (no pass of the audit's own).
                        audit_check = step_input | "Run/Audit/Check" >> AuditCheck(auditor)
                        step.pick_for_audit(audit_check)
                    result = step_input | step.ptransform()
        _check_outputs(planned, step, result)
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
        | "Run/Ledger/Sum" >> beam.CombineGlobally(_SumLedger()).without_defaults()
        | "Run/Ledger/Write" >> beam.ParDo(_WriteJson(FileSystems.join(work_dir, LEDGER_FILE)))
    )
    rejected_spill = None if spill_root is None else FileSystems.join(spill_root, "run", "rejected")
    (
        tuple(rejected)
        | "Run/Rejected/Sort" >> SortedGroups(rejected_spill)
        | "Run/Rejected/Write" >> beam.ParDo(_WriteRejected(FileSystems.join(work_dir, REJECTED_DIR)))
    )
    if auditor is not None and published is not None:
        spill = None if spill_root is None else FileSystems.join(spill_root, "run", "audit")
        checked = audit_check if audit_rows is not None else None
        audit = AuditSamples(auditor, FileSystems.join(work_dir, AUDIT_FILE), spill, checked, audit_rows)
        published | "Run/Audit" >> audit
    (
        shard_infos
        | "Run/Shards/List" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
        | "Run/Shards/Write" >> beam.ParDo(_WriteJson(FileSystems.join(work_dir, SHARDS_FILE)))
    )
