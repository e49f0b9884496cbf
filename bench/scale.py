"""Scale benchmark: the agent_flan and agenttuning recipes on AgentInstruct replicated to N trajectories.

``python -m bench.scale [--sizes 100000,1000000] [--pipelines agent_flan,agenttuning]
[--rows-per-file 10000] [--work-dir DIR] [--keep]``

For every pipeline and size, the real AgentInstruct records are replicated to N trajectories in
parquet files of ``--rows-per-file`` rows (a copy's id gets ``__r<k>`` and its first user turn
a ``[copy k]`` line, so copies are distinct records, as in a real corpus), a copy of the recipe
reads them instead of the release (the other reads keep the real files), and the recipe runs on
the in-process FnApiRunner in a fresh, measured subprocess. Prints throughput, peak memory and
the time of each step (seconds the SDK attributes to the step's transforms), and whether
peak memory stayed flat between the smallest and the largest size. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    RSS_HOW,
    format_table,
    mib,
    recipe_copy,
    replicate_parquet,
    run_child,
    snapshot_packages,
    work_dir,
)

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "pipelines", "schemas", "templates", "transforms")
RECIPES = {"agent_flan": REPO / "pipelines" / "agent_flan.yaml", "agenttuning": REPO / "pipelines" / "agenttuning.yaml"}
REPLICATED = "read_agentinstruct"
HOW = (
    "work s: run_spec inside the process after imports; traj/s = inputs of all reads / work s;\n"
    "step s: seconds the SDK's state sampler attributed to the step's transforms (its own work, sampled\n"
    "wall time of the worker thread: it includes time spent waiting for a CPU on a loaded machine)."
)
#: Peak RSS at the largest size may exceed the smallest size's by this factor and still count as flat.
FLAT_FACTOR = 1.25


def child(spec: str, output: str, result: str) -> None:
    """Run ``spec`` in this process; write ``{seconds, rows, inputs, step_seconds, dead_letters}``."""
    from pipelines.graph import load_plan
    from pipelines.run import run_spec
    from transforms.write import shard_schema

    plan = load_plan(spec)  # one-time imports stay out of the timing
    shard_schema()
    started = time.monotonic()
    manifest = run_spec(spec, output, []).manifest
    seconds = time.monotonic() - started
    reads = {s.id: manifest.steps[s.id].in_ for s in plan.steps if s.spec.type == "read"}
    outcome = {
        "seconds": seconds,
        "rows": manifest.output.num_rows,
        "inputs": sum(reads.values()),
        "reads": reads,
        "dead_letters": sum(sum(ledger.dead_letter.values()) for ledger in manifest.steps.values()),
        "step_seconds": manifest.run.get("step_seconds", {}),
        "spilled": manifest.run.get("spilled"),
    }
    with open(result, "w", encoding="utf-8") as handle:
        json.dump(outcome, handle)


def run_one(pipeline: str, n: int, work: str, src: str, rows_per_file: int) -> dict[str, Any]:
    data = os.path.join(work, f"data-{n}")
    if not os.path.isdir(data):
        sources = recipe_copy(RECIPES[pipeline], work, data, REPLICATED, "probe.json")
        print(f"  replicating {len(sources)} AgentInstruct files to {n:,} trajectories ...", flush=True)
        replicate_parquet(sources, data, n, max(1, -(-n // rows_per_file)), vary=True)
    spec = os.path.join(work, f"{pipeline}-{n}.json")
    recipe_copy(RECIPES[pipeline], work, data, REPLICATED, os.path.basename(spec))
    output, result, log = (os.path.join(work, f"{pipeline}-{n}{ext}") for ext in ("-out", ".result.json", ".log"))
    shutil.rmtree(output, ignore_errors=True)
    argv = [sys.executable, "-m", "bench.scale", "--child", spec, output, result]
    print(f"running {pipeline} on {n:,} trajectories ...", flush=True)
    outcome = run_child(argv, log, src, result, f"{pipeline} on {n:,}")
    shutil.rmtree(output, ignore_errors=True)
    return {**outcome, "n": n}


def report(pipeline: str, runs: list[dict[str, Any]]) -> bool:
    """Print one pipeline's tables; return whether peak memory stayed flat."""
    header = ["trajectories", "inputs", "rows out", "work s", "traj/s", "peak tree RSS", "max RSS", "load"]
    lines = [header]
    for r in runs:
        m = r["measured"]
        lines.append(
            [
                f"{r['n']:,}", f"{r['inputs']:,}", f"{r['rows']:,}", f"{r['seconds']:.0f}",
                f"{r['inputs'] / r['seconds']:,.0f}", mib(m.peak_tree_rss), mib(m.max_rss), f"{m.load_before:.1f}",
            ]
        )  # fmt: skip
    print(f"\n{pipeline} (in-process FnApiRunner, spilling to disk: {runs[0]['spilled']})")
    print("\n".join(format_table(lines)))
    steps = list(dict.fromkeys(step for r in runs for step in r["step_seconds"]))
    table = [["step", *(f"s @ {r['n']:,}" for r in runs), *(f"us/traj @ {r['n']:,}" for r in runs)]]
    for step in steps:
        seconds = [r["step_seconds"].get(step, 0.0) for r in runs]
        table.append(
            [
                step,
                *(f"{s:.1f}" for s in seconds),
                *(f"{1e6 * s / r['inputs']:.0f}" for s, r in zip(seconds, runs, strict=True)),
            ]
        )
    print("\n".join(format_table(table)))
    smallest, largest = runs[0]["measured"].peak_tree_rss, runs[-1]["measured"].peak_tree_rss
    flat = largest <= FLAT_FACTOR * smallest
    print(f"peak RSS {mib(smallest)} at {runs[0]['n']:,} -> {mib(largest)} at {runs[-1]['n']:,}: "
          f"{'flat' if flat else 'GROWS'} (limit x{FLAT_FACTOR})")  # fmt: skip
    return flat


def bench(args: argparse.Namespace) -> int:
    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(","))
    pipelines = args.pipelines.split(",")
    work = work_dir(args.work_dir, "agentmill-bench-scale-", REPO)
    src = os.path.join(work, "src")
    code = snapshot_packages(str(REPO), PACKAGES, src)
    print(f"work dir {work}; code snapshot {code}; {os.cpu_count()} cores")
    results = {p: [run_one(p, n, work, src, args.rows_per_file) for n in sizes] for p in pipelines}
    flat = [report(p, runs) for p, runs in results.items()]
    print(f"\n{RSS_HOW}.\n{HOW}")
    with open(os.path.join(work, "scale.json"), "w", encoding="utf-8") as handle:
        json.dump({p: [{**r, "measured": vars(r["measured"])} for r in runs] for p, runs in results.items()}, handle)
    if not args.keep and not args.work_dir:
        shutil.rmtree(work)
    return 0 if all(flat) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="trajectory counts (100000,1000000)")
    parser.add_argument("--pipelines", default="agent_flan,agenttuning", help="recipes to run (both)")
    parser.add_argument("--rows-per-file", type=int, default=10_000, help="rows per replicated parquet file (10000)")
    parser.add_argument("--work-dir", help="where data and outputs go (default: a new temp dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--child", nargs=3, metavar=("SPEC", "OUTPUT", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
