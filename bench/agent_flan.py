"""Agent-FLAN benchmark: ``pipelines/agent_flan.yaml`` with AgentInstruct replicated to N trajectories.

``python -m bench.agent_flan [--trajectories N | --quick] [--files F] [--work-dir DIR] [--keep]``

Replicates the real AgentInstruct records to N trajectories (parquet files in a temp dir) and
writes a copy of the recipe whose ``read_agentinstruct`` reads them (the other four reads keep
the real files). Runs, each in a fresh subprocess: the spec on the in-process FnApiRunner, on 2
worker processes, and a plain Python loop applying the same step functions without Beam (with
a per-step time breakdown). Prints trajectories per second, peak memory, the rows written and
whether the shards are byte-identical. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from bench.common import (
    RSS_HOW,
    VARIANT_HEADER,
    format_table,
    recipe_copy,
    replicate_parquet,
    run_variants,
    snapshot_packages,
    variant_row,
    work_dir,
)
from bench.io import PACKAGES, REPO, VARIANTS, shard_hashes, slug
from pipelines.graph import load_plan
from pipelines.run import run_spec
from schemas import ToolSpec
from transforms.base import MAIN, Failed, Filtered, Stat
from transforms.files import common_folder
from transforms.instruction_pairs import _candidate_ranks, allocate
from transforms.negatives import select
from transforms.read import ReadFile
from transforms.write import EncodeRow, shard_filename, shard_of_key, shard_schema, write_shard

RECIPE = REPO / "pipelines" / "agent_flan.yaml"
REPLICATED = "read_agentinstruct"  # the read whose files are replicated
SPEC_NAME = "agent_flan.yaml"  # the generated copy, in the work dir
#: Step type -> column of the loop's time breakdown (``write`` is split into encode and write).
LABELS = {
    "read": "read",
    "align": "align",
    "instruction_pairs": "pairs",
    "negatives": "negatives",
    "tag_capabilities": "tag",
    "balance": "balance",
}
PHASES = [*LABELS.values(), "encode", "write"]


def make_spec(work: str, data: str) -> list[str]:
    """Write the recipe's copy to ``work`` (absolute paths; ``REPLICATED`` reads ``data``); return
    the files ``REPLICATED`` originally reads (the sources to replicate)."""
    return recipe_copy(RECIPE, work, data, REPLICATED, SPEC_NAME)


def run_beam(spec: str, output: str, beam_args: list[str]) -> dict[str, Any]:
    manifest = run_spec(spec, output, beam_args).manifest
    plan = load_plan(spec)
    return {
        "rows": manifest.output.num_rows,
        "reads": {s.id: manifest.steps[s.id].in_ for s in plan.steps if s.spec.type == "read"},
        "emitted": {step: ledger.emitted for step, ledger in manifest.steps.items()},
    }


def apply(processor: Callable[..., Iterable[Any]], record: Any, **side_inputs: Any) -> list[Any]:
    """What ``RecordDoFn`` emits for ``record``: the outputs, or nothing when the processor
    filters it or it becomes a dead letter (any exception, as there)."""
    try:
        outcomes = list(processor(record, **side_inputs))
    except Exception:  # RecordError, ValidationError or a bug: a dead letter there
        return []
    if any(isinstance(o, Filtered) for o in outcomes):
        return []
    return [o for o in outcomes if not isinstance(o, Stat)]


def instruction_pairs(step: Any, trajectories: list[Any]) -> list[Any]:
    """``InstructionPairs.expand`` without Beam: rank the eligible trajectories per source, allocate."""
    config, ctx = step.config, step.context
    maker = step.maker()
    ranked: dict[str, list[Any]] = {}
    for t in trajectories:
        for group, value in _candidate_ranks(t, ctx.seed, ctx.step_id, maker.cards, config.balance_sources):
            ranked.setdefault(group, []).append(value)
    selected = allocate({g: heapq.nsmallest(config.count, keys) for g, keys in ranked.items()}, config.count)
    return [s for t in trajectories for s in apply(maker, t, selected=selected)]


def negatives(step: Any, outputs: dict[str, list[Any]]) -> list[Any]:
    """``Negatives.expand`` without Beam: the same eligibility, quotas, ranking and tool pool."""
    config, ctx = step.config, step.context
    if config.responder == "model":
        raise NotImplementedError("the plain loop does not run RunInference (responder 'model')")
    names = [("agent", n) for n in config.agent_inputs] + [("general", n) for n in config.general_inputs]
    records = [(group, t) for group, name in names for t in outputs[name]]
    maker = step.maker()
    selection = select(records, maker.reader, ctx.seed, ctx.step_id)
    tools: dict[str, str] = {}  # one tool per name: the smallest JSON
    for group, trajectory in records:
        for tool in trajectory.tools if group == "agent" else []:
            text = tool.model_dump_json()
            tools[tool.name] = min(tools.get(tool.name, text), text)
    pool = [ToolSpec.model_validate_json(text).model_dump() for _, text in sorted(tools.items())]
    return [s for r in records for s in apply(maker, r, selection=selection, pool=pool)]


def write(step: Any, samples: list[Any], output: str, seconds: Counter[str]) -> int:
    """encode -> shard, sort, write: what ``Write`` and the runner do with the samples."""
    started = time.perf_counter()
    encode = EncodeRow()
    rows: list[tuple[bytes, bytes]] = [row for s in samples for row in apply(encode, s)]
    seconds["encode"] += time.perf_counter() - started
    started = time.perf_counter()
    config = step.config
    count = config.num_shards or max(1, math.ceil(len(rows) / config.rows_per_shard))
    buckets: list[list[tuple[bytes, bytes]]] = [[] for _ in range(count)]
    for row in rows:
        buckets[shard_of_key(row[0], count)].append(row)
    del rows
    os.makedirs(output, exist_ok=True)
    schema, written = shard_schema(), 0
    for index, bucket in enumerate(buckets):
        bucket.sort()
        path = os.path.join(output, shard_filename(index, count))
        written += write_shard(path, (row for _, row in bucket), schema, config.batch_rows).rows
        bucket.clear()
    seconds["write"] += time.perf_counter() - started
    return written


def run_loop(spec: str, output: str) -> dict[str, Any]:
    """The plan's steps in topological order on Python lists, with the framework's functions."""
    plan = load_plan(spec)
    seed, base = plan.spec.seed, plan.base_dir
    last_use = {upstream: n for n, s in enumerate(plan.steps) for upstream, _ in s.inputs}
    outputs: dict[str, list[Any]] = {}
    seconds: Counter[str] = Counter()
    reads: dict[str, int] = {}
    emitted: dict[str, int] = {}
    for n, planned in enumerate(plan.steps):
        started = time.perf_counter()
        if any(port != MAIN for _, port in planned.inputs):
            raise NotImplementedError(f"step {planned.id}: the plain loop follows main outputs only")
        step, kind = planned.instantiate(seed, base), planned.spec.type
        flat = [r for upstream, _ in planned.inputs for r in outputs[upstream]]
        if kind == "read":
            files = step.input_files()
            reader = ReadFile(step.config, step.config.source or step.step_id, common_folder(files))
            records = [r for path in files for r in reader(path)]
            reads[planned.id] = len(records)
            out = [r for r in records if not isinstance(r, Failed)]
        elif kind == "instruction_pairs":
            out = instruction_pairs(step, flat)
        elif kind == "negatives":
            out = negatives(step, outputs)
        elif kind == "write":
            out, emitted[planned.id] = [], write(step, flat, output, seconds)
        elif kind in LABELS:  # a RecordStep: align, tag_capabilities, balance
            processor = step.processor()
            if callable(getattr(processor, "setup", None)):
                processor.setup()
            out = [o for r in flat for o in apply(processor, r)]
        else:
            raise NotImplementedError(f"step {planned.id}: the plain loop has no {kind!r}")
        del flat
        if kind != "write":
            seconds[LABELS[kind]] += time.perf_counter() - started
        outputs[planned.id] = out
        emitted.setdefault(planned.id, len(out))
        for upstream in [u for u, last in last_use.items() if last == n]:
            outputs[upstream] = []  # free what no later step reads
        last_use = {u: last for u, last in last_use.items() if last != n}
    rows = emitted[plan.sink.id]
    return {"rows": rows, "reads": reads, "emitted": emitted, "steps": {p: seconds[p] for p in PHASES}}


def child(variant: str, work: str, result: str) -> None:
    """Run one variant; write ``{seconds, error, shards, rows, reads, emitted[, steps]}`` to ``result``."""
    spec, output = os.path.join(work, SPEC_NAME), os.path.join(work, f"out-{slug(variant)}")
    load_plan(spec)  # one-time imports (every built-in step module, torch, datasets) stay out of the timing
    shard_schema()
    beam_args = VARIANTS[variant]
    started = time.monotonic()
    outcome: dict[str, Any] = {"error": None}
    try:
        outcome.update(run_loop(spec, output) if beam_args is None else run_beam(spec, output, beam_args))
    except Exception as exc:  # a failed run is a result too (e.g. the ledger check finding lost rows)
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    outcome["seconds"] = time.monotonic() - started
    with open(result, "w", encoding="utf-8") as handle:
        json.dump({**outcome, "shards": shard_hashes(output)}, handle)


def bench(args: argparse.Namespace) -> int:
    n = 10_000 if args.quick else args.trajectories
    work = work_dir(args.work_dir, "agentmill-bench-flan-", REPO)
    started = time.monotonic()
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    sources = make_spec(work, data)
    print(f"replicating {len(sources)} AgentInstruct files to {n:,} trajectories in {args.files} files under {work}")
    replicate_parquet(sources, data, n, args.files)
    src = os.path.join(work, "src")
    code = snapshot_packages(str(REPO), PACKAGES, src)
    print(f"  done in {time.monotonic() - started:.1f} s; code snapshot {code} in {src}")

    variants = list(VARIANTS) if not args.only else [v.strip() for v in args.only.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    results = run_variants("bench.agent_flan", variants, work, src)

    reference = results.get("plain loop") or next(iter(results.values()))  # what the others must equal
    inputs = sum(reference["reads"].values())
    table = [VARIANT_HEADER] + [variant_row(variant, r, inputs) for variant, r in results.items()]
    others = inputs - reference["reads"][REPLICATED]
    print(f"\n{n:,} AgentInstruct trajectories + {others:,} read from the other four sources = {inputs:,} inputs, "
          f"{args.files} AgentInstruct files, {os.cpu_count()} cores, code snapshot {code}")  # fmt: skip
    print("\n".join(format_table(table)))
    print(
        "work s: run_spec / the loop, timed inside the process after imports (traj/s = inputs of all reads /\n"
        "work s); process s: wall time incl. interpreter start and imports; CPU s: user+system of the process\n"
        "and its workers; load: 1-min load average at the start (above the core count = other work competed\n"
        f"for the CPUs).\n{RSS_HOW}."
    )
    if "plain loop" in results:
        loop = results["plain loop"]
        steps = [["loop step", "seconds", "share"]]
        steps += [[p, f"{s:.1f}", f"{100 * s / loop['seconds']:.0f} %"] for p, s in loop["steps"].items()]
        print("\n" + "\n".join(format_table(steps)))
    if "beam in-process" in results and "beam 2 workers" in results:
        ratio = results["beam 2 workers"]["seconds"] / results["beam in-process"]["seconds"]
        print(f"\n2 workers / in-process wall time (work s): {ratio:.2f}")
    for variant, r in results.items():
        if r["error"]:
            print(f"{variant} FAILED: {r['error']}")
    ok = {
        "rows written, per-step emitted and read counts equal across variants": all(
            (r["rows"], r["emitted"], r["reads"]) == (reference["rows"], reference["emitted"], reference["reads"])
            for r in results.values()
        ),
        "shard sha256s identical across the variants run": bool(reference["shards"])
        and all(r["shards"] == reference["shards"] for r in results.values()),
    }
    for check, passed in ok.items():
        print(f"{check}: {'yes' if passed else 'NO'}")
    for variant, r in results.items():
        for filename, digest in r["shards"].items():
            print(f"  {slug(variant):<16} {filename}  {digest}")
    if args.keep:
        print(f"kept {work}")
    elif not args.work_dir:
        shutil.rmtree(work)
    return 0 if all(ok.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_flan", description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=100_000, help="AgentInstruct trajectories (100000)")
    parser.add_argument("--quick", action="store_true", help="smoke run on 10,000 trajectories")
    parser.add_argument("--files", type=int, default=16, help="files the AgentInstruct copies are spread over (16)")
    parser.add_argument("--work-dir", help="where data and outputs go (default: a new temp dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--only", help=f"comma-separated variants to run (default: all of {', '.join(VARIANTS)})")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.work_dir, args.result)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
