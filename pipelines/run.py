"""Running a plan: inputs fingerprinted, Beam pipeline run, ledger checked, output published.

A run never publishes unless every step's ledger balances (``in == passed + filtered +
dead_letter``), every step received exactly what its inputs emitted, the shards hold exactly
what the ``write`` step accepted, and the publish guard passes (:func:`check_publishable`: rows
to publish, dead letters within bounds). It holds the output's lock from before it touches the
output until it has published (:func:`pipelines.publish.lock_output`), refuses an output that
its own inputs would read back (:func:`check_output_not_read`), and turns an ``OSError`` while
publishing (disk full, read-only) into an :class:`OutputError` with the previous output kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import beam_speed, beam_workarounds, forked_workers, storage
from pipelines.build import (
    AUDIT_FILE,
    LEDGER_FILE,
    REJECTED_DIR,
    SHARDS_FILE,
    build,
    check_step_contracts,
    prefetch,
)
from pipelines.errors import OutputError, RunError, SpecError
from pipelines.graph import Plan, load_plan
from pipelines.inputs import collect_inputs
from pipelines.publish import (
    MANIFEST,
    OWN_FILES,
    REJECTED,
    check_output_path,
    lock_output,
    prepare,
    publish,
    work_dir_for,
)
from pipelines.report import write_report
from pipelines.timing import step_seconds
from schemas import AuditReport, InputFile, Manifest, OutputInfo, ShardInfo, StepLedger
from schemas.hf_features import dataset_info_dict
from transforms.audit import AUDITS_DIR
from transforms.base import DEAD_LETTER, EMITTED, FILTERED, IN, MAIN, PASSED, PORT, STAT
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
        if forked_workers.enabled():  # the FnApiRunner, its multi-processing workers forked warm
            return options, forked_workers.ForkedWorkersRunner()
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return options, FnApiRunner()
    return options, runner


#: Runners that execute on one machine and hold what crosses a stage boundary in memory.
_IN_MEMORY_RUNNERS = {
    "FnApiRunner",
    "ForkedWorkersRunner",
    "DirectRunner",
    "BundleBasedDirectRunner",
    "SwitchingDirectRunner",
}


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


def _patterns(node: Any) -> list[str]:
    """Every value of a ``paths`` key in a (dumped) config, at any depth."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "paths" and isinstance(value, str):
                found.append(value)
            elif key == "paths" and isinstance(value, list):
                found.extend(v for v in value if isinstance(v, str))
            else:
                found.extend(_patterns(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_patterns(item))
    return found


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_output_not_read(plan: Plan, output: str, inputs: list[InputFile]) -> None:
    """Refuse, before anything runs, an output that the plan's inputs would read back: an input
    file already inside the output (or its working folders), or an input pattern that matches a
    file a run publishes there (``manifest.json``, ``rejected/<step>.jsonl``, ...)."""
    remote = storage.is_remote(output)
    out = output.rstrip("/") if remote else os.path.abspath(output)
    work = work_dir_for(output)
    roots = [out, work, f"{work}.old"]
    for item in inputs:
        path = item.path if storage.is_remote(item.path) else os.path.abspath(item.path)
        if any(_inside(path, root) for root in roots):
            raise SpecError(
                plan.path,
                f"input file {item.path!r} lies inside the output {out!r}: the run would read its own output; "
                "write the output elsewhere",
                step_id=item.step,
            )
    names = [*sorted(OWN_FILES), *(f"{REJECTED}/{s.id}.jsonl" for s in plan.steps)]
    published = [f"{root}/{name}" for root in roots for name in names]
    checked = [(s.id, s.config.model_dump(mode="json")) for s in plan.steps]
    if plan.spec.audit.enabled:
        checked.append(("audit", plan.spec.audit.model_dump(mode="json")))
    for step_id, config in checked:
        for pattern in _patterns(config):
            absolute = pattern if "://" in pattern or os.path.isabs(pattern) else os.path.join(plan.base_dir, pattern)
            absolute = absolute if "://" in absolute else os.path.normpath(absolute)
            regex = re.compile(FileSystem.translate_pattern(absolute))
            hit = next((p for p in published if regex.match(p)), None)
            if hit is not None:
                raise SpecError(
                    plan.path,
                    f"input pattern {pattern!r} matches {hit!r}, a file this run publishes: the next run would "
                    "read its own output; write the output elsewhere or narrow the pattern",
                    step_id=step_id if step_id != "audit" else None,
                )


def check_publishable(
    plan: Plan,
    ledgers: dict[str, StepLedger],
    rows: int,
    allow_empty: bool,
    max_dead_letter_share: float,
    work: str | None = None,
) -> None:
    """The publish guard: raise :class:`RunError` (nothing published, the previous output kept)
    when there are no rows to publish and ``allow_empty`` is off, or when a step turned more than
    ``max_dead_letter_share`` of the records it received into dead letters."""
    problems = []
    if rows == 0 and not allow_empty:
        problems.append(f"the write step {plan.sink.id!r} has no rows to publish")
    for planned in plan.steps:
        ledger = ledgers[planned.id]
        dead = sum(ledger.dead_letter.values())
        if ledger.in_ and dead / ledger.in_ > max_dead_letter_share:
            reasons = ", ".join(
                f"{reason} {n}" for reason, n in sorted(ledger.dead_letter.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            )
            problems.append(
                f"step {planned.id!r}: {dead} of {ledger.in_} records are dead letters "
                f"({dead / ledger.in_:.0%} > max_dead_letter_share {max_dead_letter_share:g}; {reasons})"
            )
    if problems:
        raise RunError(
            "nothing was published, the previous output is kept:\n  "
            + "\n  ".join(problems)
            + "\n(to publish such a run anyway: the spec's 'publish:' block, allow_empty / max_dead_letter_share, "
            "or --allow-empty / --max-dead-letter-share"
            + (f"; its dead letters are in {FileSystems.join(work, REJECTED)} until the next run)" if work else ")")
        )


def _run_list(work: str, name: str) -> list[Any]:
    """A list the pipeline wrote to ``name`` in the working directory (its combine writes
    nothing for a run with no entries: then ``[]``)."""
    path = FileSystems.join(work, name)
    return json.loads(storage.read_text(path)) if FileSystems.exists(path) else []


def read_ledger(plan: Plan, work: str) -> dict[str, StepLedger]:
    entries = _run_list(work, LEDGER_FILE)
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
    texts = _run_list(work, SHARDS_FILE)
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
    """``state.json`` and ``dataset_info.json`` as ``datasets.Dataset.save_to_disk`` writes them
    (without importing ``datasets``: :mod:`schemas.hf_features`)."""
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
    as_dict = dataset_info_dict(shard_schema())
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
    allow_empty: bool | None = None,
    max_dead_letter_share: float | None = None,
) -> RunSummary:
    """Run ``plan`` and publish its output to ``output``. ``spill`` forces spilling stage
    crossings to disk on or off; ``None`` decides by runner (:func:`spills`). ``allow_empty`` and
    ``max_dead_letter_share`` override the spec's ``publish:`` block (:func:`check_publishable`).

    The output is locked for the whole run; a second run to it raises :class:`OutputError`
    before touching anything. An ``OSError`` (disk full, read-only location) becomes an
    :class:`OutputError`; on it, and on Ctrl-C, the working directory is removed and nothing is
    published."""
    beam_args = list(beam_args or [])
    check_output_path(output)
    on_stage("fingerprinting inputs")
    inputs = collect_inputs(plan)
    check_output_not_read(plan, output, inputs)
    policy = plan.spec.publish
    guard = (
        policy.allow_empty if allow_empty is None else allow_empty,
        policy.max_dead_letter_share if max_dead_letter_share is None else max_dead_letter_share,
    )
    with lock_output(output):
        work = prepare(output)
        try:
            return _run_and_publish(plan, output, work, inputs, beam_args, on_stage, spill, guard)
        except KeyboardInterrupt:
            _discard(work)
            raise
        except OSError as exc:
            _discard(work)
            where = exc.filename or work
            raise OutputError(
                f"cannot write {where!r}: {exc.strerror or exc}; nothing was published, the previous output is kept"
            ) from None


@contextlib.contextmanager
def _interrupts_noted() -> Iterator[list[int]]:
    """Ctrl-C raises ``KeyboardInterrupt`` as usual and is also noted in the yielded list, so a
    pipeline error caused by it (Beam reraises it from a DoFn as ``RuntimeError``) is still told
    apart as an interruption. Only in the main thread, where Python delivers signals."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    beam_log = logging.getLogger("apache_beam")
    level = beam_log.level

    def handler(signum: int, frame: Any) -> None:
        noted.append(signum)
        beam_log.setLevel(logging.CRITICAL + 1)  # not Beam's traceback of the DoFn we interrupted
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
        beam_log.setLevel(level)


def _discard(work: str) -> None:
    """Remove a run's working directory after it failed (best effort: the next run also does)."""
    with contextlib.suppress(Exception):
        storage.remove_tree(work)


def _run_and_publish(
    plan: Plan,
    output: str,
    work: str,
    inputs: list[InputFile],
    beam_args: list[str],
    on_stage: Callable[[str], None],
    spill: bool | None,
    guard: tuple[bool, float],
) -> RunSummary:
    options, runner = make_options(beam_args)
    started = time.monotonic()
    on_stage("running pipeline")
    pipeline = beam.Pipeline(runner=runner, options=options)
    spill = spills(options, runner) if spill is None else spill
    spill_root = spill_root_for(output, work) if spill else None
    if spill_root is not None:
        shutil.rmtree(spill_root, ignore_errors=True)  # left by a run that was killed
    if forked_workers.workers_here(runner, options):
        prefetch(plan)
    build(pipeline, plan, work, spill_root)
    try:
        with (
            forked_workers.forked_workers(runner, options),
            beam_speed.uncompressed_payloads(forked_workers.workers_in_process(runner, options)),
            _interrupts_noted() as interrupted,
        ):
            try:
                result = pipeline.run()
                state = result.wait_until_finish()
            except Exception as exc:
                if interrupted:  # Beam wraps a Ctrl-C that lands inside a DoFn in its own error
                    raise KeyboardInterrupt from None
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
    check_step_contracts(plan, ledgers, work)
    check_ledger(plan, ledgers, sum(s.rows for s in shards))
    check_publishable(plan, ledgers, sum(s.rows for s in shards), *guard, work=work)
    run_lists = [FileSystems.join(work, name) for name in (SHARDS_FILE, LEDGER_FILE)]
    FileSystems.delete([path for path in run_lists if FileSystems.exists(path)])
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
