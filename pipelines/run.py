"""Running a plan: inputs fingerprinted, Beam pipeline run, ledger checked, output published.

A run never publishes unless every step's ledger balances (``in == passed + filtered +
dead_letter``), every step received exactly what its inputs emitted, and the shards hold exactly
what the ``write`` step accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import beam_workarounds, storage
from pipelines.build import AUDIT_FILE, LEDGER_FILE, REJECTED_DIR, SHARDS_FILE, build
from pipelines.errors import RunError, SpecError
from pipelines.graph import Plan, load_plan
from pipelines.publish import MANIFEST, prepare, publish
from pipelines.report import write_report
from pipelines.timing import step_seconds
from schemas import AuditReport, InputFile, Manifest, OutputInfo, ShardInfo, StepLedger
from transforms.audit import AUDITS_DIR, eval_files
from transforms.base import DEAD_LETTER, EMITTED, FILTERED, IN, MAIN, PASSED, PORT, STAT
from transforms.files import InputError, fingerprint
from transforms.spill import SPILL_FOLDER
from transforms.write import Write, shard_filename, shard_schema, write_shard


def agentmill_version() -> str:
    try:
        return version("agentmill")
    except PackageNotFoundError:
        return "0+unknown"


def make_options(beam_args: list[str]) -> tuple[PipelineOptions, Any]:
    """Beam options from the command line; the runner defaults to the in-process FnApiRunner."""
    beam_workarounds.apply()
    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return options, FnApiRunner()
    return options, runner


#: Runners that execute on one machine and hold what crosses a stage boundary in memory.
_IN_MEMORY_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}


def spills(options: PipelineOptions, runner: Any) -> bool:
    """Whether a run should spill stage crossings to disk (:mod:`transforms.spill`): yes on the
    runners that would keep them in memory (in-process, multi-processing, the embedded portable
    job server); no on Dataflow, Flink and Spark, which shuffle to disk themselves."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    name = name.rsplit(".", 1)[-1]
    if name == "PortableRunner":
        from apache_beam.options.pipeline_options import PortableOptions

        return options.view_as(PortableOptions).job_endpoint == "embed"
    return name in _IN_MEMORY_RUNNERS


def spill_root_for(output: str, work: str) -> str:
    """Where a run spills: ``_spill`` in its working directory, or, when the output is remote
    (the runner is still local), a folder of this machine's temp dir named after the output, so
    the next run to that output finds and deletes what a killed run left."""
    if not storage.is_remote(work):
        return os.path.join(work, SPILL_FOLDER)
    digest = hashlib.sha256(output.encode("utf-8")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"agentmill-spill-{digest}")


def collect_inputs(plan: Plan, files: bool = True, fingerprints: bool = True) -> list[InputFile]:
    """Run every step's own checks (templates, tokenizers, model directories), then resolve its
    input files (``files``) and fingerprint them (``fingerprints``; otherwise size and hash are
    left empty). Every problem is a :class:`SpecError` naming the step."""
    inputs = []
    for planned in plan.steps:
        step = planned.instantiate(plan.spec.seed, plan.base_dir)
        try:
            step.check()
        except ValueError as exc:
            raise SpecError(plan.path, str(exc), step_id=planned.id) from None
        files_of = getattr(step, "input_files", None)
        if files_of is None or not files:
            continue
        try:
            paths = files_of()
        except InputError as exc:
            raise SpecError(plan.path, str(exc), step_id=planned.id) from None
        inputs.extend(_input_files(planned.id, paths, fingerprints))
    if files and plan.spec.audit.enabled and plan.spec.audit.eval_sets:
        try:
            paths = eval_files(plan.spec.audit.eval_sets, plan.base_dir)
        except InputError as exc:
            raise SpecError(plan.path, f"audit eval_sets: {exc}") from None
        inputs.extend(_input_files("audit", paths, fingerprints))
    return inputs


def _input_files(step_id: str, paths: list[str], fingerprints: bool) -> list[InputFile]:
    inputs = []
    for path in paths:
        if fingerprints:
            fp = fingerprint(path)
            inputs.append(InputFile(step=step_id, path=fp.path, bytes=fp.bytes, sha256=fp.sha256))
        else:
            inputs.append(InputFile(step=step_id, path=path, bytes=0, sha256=""))
    return inputs


def read_ledger(plan: Plan, work: str) -> dict[str, StepLedger]:
    entries = json.loads(storage.read_text(FileSystems.join(work, LEDGER_FILE)))
    ledgers = {s.id: StepLedger(type=s.spec.type) for s in plan.steps}
    for (step_id, category, reason), n in entries:
        ledger = ledgers[step_id]
        if category == IN:
            ledger.in_ += n
        elif category == PASSED:
            ledger.passed += n
        elif category == EMITTED:
            ledger.emitted += n
        elif category == FILTERED:
            ledger.filtered[reason] = ledger.filtered.get(reason, 0) + n
        elif category == DEAD_LETTER:
            ledger.dead_letter[reason] = ledger.dead_letter.get(reason, 0) + n
        elif category == PORT:
            ledger.ports[reason] = ledger.ports.get(reason, 0) + n
        elif category == STAT:
            ledger.stats[reason] = ledger.stats.get(reason, 0) + n
    return ledgers


def check_ledger(plan: Plan, ledgers: dict[str, StepLedger], rows_written: int) -> None:
    """Raise :class:`RunError` unless every record is accounted for, step by step."""
    problems = []
    for planned in plan.steps:
        ledger = ledgers[planned.id]
        if not ledger.balanced():
            problems.append(
                f"step {planned.id!r}: in={ledger.in_} but passed={ledger.passed} + filtered="
                f"{sum(ledger.filtered.values())} + dead_letter={sum(ledger.dead_letter.values())}"
            )
        if planned.inputs:
            received = sum(
                ledgers[i].emitted if port == MAIN else ledgers[i].ports.get(port, 0) for i, port in planned.inputs
            )
            if received != ledger.in_:
                problems.append(f"step {planned.id!r}: inputs emitted {received} records but it counted {ledger.in_}")
    sink = ledgers[plan.sink.id]
    if sink.passed != rows_written:
        problems.append(f"write step accepted {sink.passed} samples but the shards hold {rows_written}")
    if problems:
        raise RunError("the run's accounting does not add up:\n  " + "\n  ".join(problems))


def finish_shards(plan: Plan, work: str) -> list[ShardInfo]:
    """Shard infos in index order; shards that received no rows are written empty."""
    texts = json.loads(storage.read_text(FileSystems.join(work, SHARDS_FILE)))
    infos = {i.filename: i for i in (ShardInfo.model_validate_json(text) for text in texts)}
    count = len(infos)
    if infos:
        count = int(next(iter(infos)).split("-of-")[1].split(".")[0])
    config = plan.sink.config
    if not infos:
        count = getattr(config, "num_shards", None) or 1
    shards = []
    for index in range(count):
        name = shard_filename(index, count)
        if name not in infos:
            infos[name] = write_shard(FileSystems.join(work, name), [], shard_schema(), 1)
        shards.append(infos[name])
    return shards


def write_dataset_files(work: str, shards: list[ShardInfo], fingerprint_: str) -> None:
    """``state.json`` and ``dataset_info.json`` as ``datasets.Dataset.save_to_disk`` writes them."""
    import datasets

    schema = shard_schema()
    info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(schema))
    state = {
        "_data_files": [{"filename": s.filename} for s in shards],
        "_fingerprint": fingerprint_,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    storage.write_text(FileSystems.join(work, "state.json"), json.dumps(state, indent=2, sort_keys=True))
    # First-level keys only: sorting nested keys would reorder the struct fields of features.
    as_dict = asdict(info)
    storage.write_text(
        FileSystems.join(work, "dataset_info.json"),
        json.dumps({key: as_dict[key] for key in sorted(as_dict)}, indent=2),
    )


def read_audits(plan: Plan, work: str) -> tuple[AuditReport | None, dict[str, AuditReport]]:
    """The publish audit and each ``audit`` step's report, read from (and removed from) ``work``."""
    audit = None
    path = FileSystems.join(work, AUDIT_FILE)
    if FileSystems.exists(path):
        audit = AuditReport.model_validate_json(storage.read_text(path))
        FileSystems.delete([path])
    audits = {}
    for planned in plan.steps:
        step_path = FileSystems.join(work, AUDITS_DIR, f"{planned.id}.json")
        if planned.spec.type == "audit" and FileSystems.exists(step_path):
            audits[planned.id] = AuditReport.model_validate_json(storage.read_text(step_path))
    if FileSystems.exists(FileSystems.join(work, AUDITS_DIR)):
        FileSystems.delete([FileSystems.join(work, AUDITS_DIR)])
    return audit, audits


def blocking_message(audit: AuditReport) -> str:
    """The run's error for blocking audit checks: each check, its figure and example ids."""
    lines = []
    for name in audit.blocking:
        result = audit.checks[name]
        ids = ", ".join(e.id for e in result.examples[:5]) or "none"
        lines.append(
            f"{name}: {result.share:.4g} > threshold {result.threshold:g} ({result.count} of {result.total}); "
            f"examples: {ids}"
        )
    return (
        "the data-quality audit failed, nothing was published:\n  "
        + "\n  ".join(lines)
        + "\n(see docs/audit.md; a check's severity or threshold is set in the spec's 'audit:' block)"
    )


@dataclass
class RunSummary:
    output: str
    manifest: Manifest
    seconds: float


def run_plan(
    plan: Plan,
    output: str,
    beam_args: list[str] | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
    spill: bool | None = None,
) -> RunSummary:
    """Run ``plan`` and publish its output to ``output``. ``spill`` forces spilling stage
    crossings to disk on or off; ``None`` decides by runner (:func:`spills`)."""
    beam_args = list(beam_args or [])
    on_stage("fingerprinting inputs")
    inputs = collect_inputs(plan)
    work = prepare(output)
    options, runner = make_options(beam_args)
    started = time.monotonic()
    on_stage("running pipeline")
    pipeline = beam.Pipeline(runner=runner, options=options)
    spill = spills(options, runner) if spill is None else spill
    spill_root = spill_root_for(output, work) if spill else None
    if spill_root is not None:
        shutil.rmtree(spill_root, ignore_errors=True)  # left by a run that was killed
    build(pipeline, plan, work, spill_root)
    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    except Exception as exc:
        raise RunError(f"the pipeline failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if spill_root is not None:
            shutil.rmtree(spill_root, ignore_errors=True)
    if state not in (None, "DONE", beam.runners.runner.PipelineState.DONE):
        raise RunError(f"the pipeline ended in state {state}")
    seconds = time.monotonic() - started

    on_stage("checking the ledger")
    if not storage.is_remote(work):
        os.makedirs(os.path.join(work, REJECTED_DIR), exist_ok=True)
    shards = finish_shards(plan, work)
    ledgers = read_ledger(plan, work)
    check_ledger(plan, ledgers, sum(s.rows for s in shards))
    FileSystems.delete([FileSystems.join(work, SHARDS_FILE), FileSystems.join(work, LEDGER_FILE)])
    on_stage("auditing")
    audit, audits = read_audits(plan, work)
    if audit is not None and audit.blocking:
        raise RunError(blocking_message(audit))

    sink = ledgers[plan.sink.id]
    ratios = {}
    for planned in plan.steps:
        summary = planned.cls.summarize(planned.config, ledgers[planned.id])
        if summary is not None:
            ratios[planned.id] = summary
    manifest = Manifest(
        agentmill_version=agentmill_version(),
        name=plan.spec.name,
        spec=plan.spec.model_dump(mode="json"),
        spec_hash=plan.spec_hash,
        config_hashes={s.id: s.config_hash for s in plan.steps},
        inputs=inputs,
        steps=ledgers,
        output=OutputInfo(
            num_rows=sum(s.rows for s in shards),
            shards=shards,
            tokens=sink.stats.get("tokens", 0),
            supervised_tokens=sink.stats.get("supervised_tokens", 0),
            by_kind={k.split(":", 1)[1]: v for k, v in sink.stats.items() if k.startswith("kind:")},
        ),
        ratios=ratios,
        audit=audit,
        audits=audits,
        run={
            "runner": type(runner).__name__ if not isinstance(runner, str) else runner,
            "beam_args": beam_args,
            "spilled": spill_root is not None,
            "seconds": round(seconds, 3),
            "step_seconds": step_seconds(result, [s.id for s in plan.steps]),
        },
    )
    on_stage("publishing")
    write_dataset_files(work, shards, "".join(s.sha256 for s in shards)[:16] or plan.spec_hash)
    write_report(work, manifest)
    storage.write_text(FileSystems.join(work, MANIFEST), manifest.dump_json())
    publish(work, output)
    published = output if storage.is_remote(output) else os.path.abspath(output)
    return RunSummary(output=published, manifest=manifest, seconds=seconds)


def run_spec(spec_path: str, output: str, beam_args: list[str] | None = None, **kwargs: Any) -> RunSummary:
    """Load, validate and run the spec at ``spec_path``."""
    return run_plan(load_plan(spec_path), output, beam_args, **kwargs)


__all__ = ["RunSummary", "Write", "run_plan", "run_spec"]
