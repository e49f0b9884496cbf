"""I/O benchmark: read -> to_chat -> write on replicated AgentInstruct trajectories.

``python -m bench.io [--trajectories N | --quick] [--files F] [--work-dir DIR] [--keep] [--profile]``

Replicates the real AgentInstruct records to N trajectories (parquet files in a temp dir), then
runs, each in a fresh subprocess: the agentmill spec on the in-process FnApiRunner, the same spec
on 2 worker processes, and a plain Python loop calling the same library functions without Beam.
Prints trajectories per second, peak memory, the rows written and whether the shards are
byte-identical. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from bench.common import (
    RSS_HOW,
    VARIANT_HEADER,
    format_table,
    replicate_parquet,
    run_variants,
    sha256_file,
    snapshot_packages,
    variant_row,
    work_dir,
)
from pipelines.graph import load_plan
from pipelines.run import run_spec
from transforms.base import Failed, Filtered, Stat
from transforms.files import resolve_paths
from transforms.read import ReadFile
from transforms.to_chat import to_chat
from transforms.write import EncodeRow, shard_filename, shard_of_key, shard_schema, write_shard

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "pipelines", "schemas", "transforms")  # snapshot the subprocesses import
SOURCE = "../shared/data/external/agentinstruct_thudm/*.parquet"  # relative to the repo root
VARIANTS: dict[str, list[str] | None] = {
    "beam in-process": [],
    "beam 2 workers": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "plain loop": None,  # no Beam
}
SPEC = {
    "name": "bench_io",
    "description": "bench.io: replicated AgentInstruct -> chat samples -> Arrow shards",
    "seed": 0,
    "steps": [
        {
            "id": "read",
            "type": "read",
            "config": {"format": "agentinstruct", "source": "agentinstruct", "paths": "data/*.parquet"},
        },
        {"id": "chat", "type": "to_chat", "inputs": ["read"], "config": {"kind": "agent"}},
        {"id": "write", "type": "write", "inputs": ["chat"]},
    ],
}


def slug(variant: str) -> str:
    return variant.replace(" ", "-")


def shard_hashes(directory: str) -> dict[str, str]:
    return {os.path.basename(p): sha256_file(p) for p in sorted(glob.glob(os.path.join(directory, "*.arrow")))}


def run_beam(spec: str, output: str, beam_args: list[str]) -> int:
    return run_spec(spec, output, beam_args).manifest.output.num_rows


def run_loop(spec: str, output: str) -> int:
    """read -> to_chat -> encode -> shard, sort, write: the framework's functions, no Beam."""
    plan = load_plan(spec)
    read, chat, write = (plan.by_id[i] for i in ("read", "chat", "write"))
    reader = ReadFile(read.config, read.config.source or read.id)
    context = chat.context(plan.spec.seed, plan.base_dir, None)
    encode = EncodeRow()
    rows: list[tuple[bytes, bytes]] = []
    for path in resolve_paths(read.config.paths, plan.base_dir):
        for trajectory in reader(path):
            if isinstance(trajectory, Failed):
                raise RuntimeError(f"dead letter: {trajectory}")
            sample = to_chat(trajectory, chat.config, context)
            if isinstance(sample, Filtered):
                continue
            rows += [out for out in encode(sample) if not isinstance(out, Stat)]
    count = write.config.num_shards or max(1, math.ceil(len(rows) / write.config.rows_per_shard))
    buckets: list[list[tuple[bytes, bytes]]] = [[] for _ in range(count)]
    for row in rows:
        buckets[shard_of_key(row[0], count)].append(row)
    del rows
    os.makedirs(output, exist_ok=True)
    schema = shard_schema()
    written = 0
    for index, bucket in enumerate(buckets):
        bucket.sort()
        path = os.path.join(output, shard_filename(index, count))
        written += write_shard(path, (row for _, row in bucket), schema, write.config.batch_rows).rows
        bucket.clear()
    return written


def child(variant: str, work: str, result: str) -> None:
    """Run one variant and write ``{seconds, rows, error, shards}`` to ``result``."""
    spec, output = os.path.join(work, "bench_io.yaml"), os.path.join(work, f"out-{slug(variant)}")
    load_plan(spec)  # one-time imports (every built-in step module, datasets) stay out of the timing
    shard_schema()
    started = time.monotonic()
    beam_args = VARIANTS[variant]
    rows, error = None, None
    try:
        rows = run_loop(spec, output) if beam_args is None else run_beam(spec, output, beam_args)
    except Exception as exc:  # a failed run is a result too (e.g. the ledger check finding lost rows)
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    with open(result, "w", encoding="utf-8") as handle:
        json.dump({"seconds": seconds, "rows": rows, "error": error, "shards": shard_hashes(output)}, handle)


def bench(args: argparse.Namespace) -> int:
    n = 10_000 if args.quick else args.trajectories
    work = work_dir(args.work_dir, "agentmill-bench-io-", REPO)
    sources = sorted(glob.glob(str(REPO / args.source)))
    if not sources:
        raise SystemExit(f"no input matches {args.source!r} (relative to {REPO})")
    print(f"replicating {len(sources)} files of AgentInstruct to {n:,} trajectories in {args.files} files under {work}")
    started = time.monotonic()
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    replicate_parquet(sources, data, n, args.files)
    with open(os.path.join(work, "bench_io.yaml"), "w", encoding="utf-8") as handle:
        json.dump(SPEC, handle, indent=2)  # JSON is YAML
    src = os.path.join(work, "src")
    code = snapshot_packages(str(REPO), PACKAGES, src)
    print(f"  done in {time.monotonic() - started:.1f} s; code snapshot {code} in {src}")

    results = run_variants("bench.io", list(VARIANTS), work, src, args.profile)

    table = [VARIANT_HEADER] + [variant_row(variant, r, n) for variant, r in results.items()]
    print(f"\n{n:,} trajectories, {args.files} input files, {os.cpu_count()} cores, code snapshot {code}")
    print("\n".join(format_table(table)))
    print(
        "work s: run_spec / the loop, timed inside the process after imports (traj/s = trajectories / work s);\n"
        "process s: wall time incl. interpreter start and imports; CPU s: user+system of the process and its\n"
        "workers; load: 1-min load average at the start (above the core count = other work competed for the\n"
        f"CPUs).\n{RSS_HOW}."
    )
    for variant, r in results.items():
        if r["error"]:
            print(f"{variant} FAILED: {r['error']}")
    all_rows = all(r["rows"] == n for r in results.values())
    beam = [r["shards"] for v, r in results.items() if VARIANTS[v] is not None]
    same_beam = all(s == beam[0] for s in beam) and bool(beam[0])
    same_loop = results["plain loop"]["shards"] == beam[0]
    print(f"rows written == input ({n:,}) for every variant: {'yes' if all_rows else 'NO'}")
    print(f"Beam shard sha256s identical across the two runners: {'yes' if same_beam else 'NO'}")
    print(f"plain-loop shards identical to Beam's: {'yes' if same_loop else 'NO'}")
    for variant, r in results.items():
        for filename, digest in r["shards"].items():
            print(f"  {slug(variant):<16} {filename}  {digest}")
    if args.profile:
        print(f"cProfile output: {work}/*.prof (the 2-worker file covers only the driver process)")
    if args.keep or args.profile:
        print(f"kept {work}")
    elif not args.work_dir:
        shutil.rmtree(work)
    return 0 if all_rows and same_beam and same_loop else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.io", description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=100_000, help="trajectories to replicate (100000)")
    parser.add_argument("--quick", action="store_true", help="smoke run on 10,000 trajectories")
    parser.add_argument("--files", type=int, default=16, help="input files the trajectories are spread over (16)")
    parser.add_argument("--source", default=SOURCE, help=f"parquet files to replicate, relative to the repo ({SOURCE})")
    parser.add_argument("--work-dir", help="where data and outputs go (default: a new temp dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--profile", action="store_true", help="run each variant under cProfile (slower; kept)")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.work_dir, args.result)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
