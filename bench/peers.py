"""Side by side: agentmill, a plain loop and datatrove on the same work (issue 16).

``python -m bench.peers [--size 30000] [--rounds 1] [--files 16] [--only V1,V2] [--audit] [--work-dir DIR]
[--keep]``

The real AgentInstruct trajectories (``../shared/data/external/agentinstruct_thudm``) are
replicated to ``--size`` records in ``--files`` parquet files (as :mod:`bench.io` does), then
each variant runs read -> to_chat -> write Arrow on them, in a fresh measured subprocess of
this process tree, with the same per-record functions (:class:`transforms.read.ReadFile`,
:func:`transforms.to_chat.to_chat`, :class:`transforms.write.EncodeRow`,
:func:`transforms.write.write_shard`):

- ``agentmill in-process``: ``run_spec`` on the default in-process FnApiRunner;
- ``agentmill 2 workers``: the same spec with ``--direct_running_mode=multi_processing
  --direct_num_workers=2``;
- ``plain loop``: the functions in one Python loop, no framework (:func:`bench.io.run_loop`),
  shards byte-identical to agentmill's;
- ``datatrove 1 worker`` / ``datatrove 2 workers``: datatrove's ``LocalPipelineExecutor``
  with one task per input file, each task reading its file, converting and writing one Arrow
  shard sorted by id (datatrove's own model: no global shuffle, so its shards differ from
  agentmill's; the row count must match).

Variants run interleaved: with ``--rounds R`` every round runs each variant once (the order
rotates by one each round), and the table gives the median of the rounds per variant. It
prints traj/s, CPU seconds, peak RSS of the process tree (psutil, children included) and the
ratios the issue tracks. agentmill's data-quality audit of what ``write`` publishes is off
(the loop and datatrove audit nothing; ``--audit`` turns it on). datatrove comes from the optional ``bench`` extra
(``pip install -c constraints.txt -e .[bench]``); without it the datatrove variants are skipped.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import RSS_HOW, format_table, mib, replicate_parquet, run_child, snapshot_packages, work_dir

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "pipelines", "schemas", "templates", "transforms")
SOURCE = "../shared/data/external/agentinstruct_thudm/*.parquet"
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
#: variant -> (kind, argument): Beam arguments, or datatrove's worker count.
VARIANTS: dict[str, tuple[str, Any]] = {
    "agentmill in-process": ("agentmill", []),
    "agentmill 2 workers": ("agentmill", TWO_WORKERS),
    "plain loop": ("loop", None),
    "datatrove 1 worker": ("datatrove", 1),
    "datatrove 2 workers": ("datatrove", 2),
}


def slug(variant: str) -> str:
    return variant.replace(" ", "-")


def have_datatrove() -> bool:
    try:
        import datatrove  # noqa: F401
    except ImportError:
        return False
    return True


# --- datatrove: the same functions as pipeline steps ------------------------------------------------


try:  # the optional ``bench`` extra
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # the datatrove variants are skipped
    PipelineStep = object  # type: ignore[assignment,misc]


class _AgentmillStep(PipelineStep):  # type: ignore[misc,valid-type]
    """A datatrove step that knows the bench spec (module-level: datatrove pickles its steps)."""

    type = "agentmill"

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec


class ReadTrajectories(_AgentmillStep):
    """Task ``rank`` reads input file ``rank`` with agentmill's reader."""

    name = "read trajectories"

    def __init__(self, spec: str, files: list[str]) -> None:
        super().__init__(spec)
        self.files = files

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        from pipelines.graph import load_plan
        from transforms.base import Failed
        from transforms.read import ReadFile

        step = load_plan(self.spec).by_id["read"]
        reader = ReadFile(step.config, step.config.source or step.id)
        for trajectory in reader(self.files[rank]):
            if isinstance(trajectory, Failed):
                raise RuntimeError(f"dead letter: {trajectory}")
            self.stat_update("trajectories")
            yield trajectory


class ToChat(_AgentmillStep):
    """agentmill's ``to_chat`` on each trajectory."""

    name = "to_chat"

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        from pipelines.graph import load_plan
        from transforms.base import Filtered
        from transforms.to_chat import to_chat

        plan = load_plan(self.spec)
        chat = plan.by_id["chat"]
        context = chat.context(plan.spec.seed, plan.base_dir, None)
        for trajectory in data:
            with self.track_time():
                sample = to_chat(trajectory, chat.config, context)
            if isinstance(sample, Filtered):
                self.stat_update("filtered")
                continue
            self.stat_update("samples")
            yield sample


class WriteArrow(_AgentmillStep):
    """Encodes each sample as agentmill's Arrow row; writes the task's rows, sorted by id, as
    one shard ``part-<rank>.arrow`` (and its row count in ``part-<rank>.json``)."""

    name = "write arrow"

    def __init__(self, spec: str, output: str) -> None:
        super().__init__(spec)
        self.output = output

    def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        from pipelines.graph import load_plan
        from transforms.base import Stat
        from transforms.write import EncodeRow, shard_schema, write_shard

        write = load_plan(self.spec).by_id["write"]
        encode = EncodeRow()
        rows: list[tuple[bytes, bytes]] = []
        for sample in data:
            with self.track_time():
                rows += [out for out in encode(sample) if not isinstance(out, Stat)]
        with self.track_time():
            rows.sort()
            path = os.path.join(self.output, f"part-{rank:05d}.arrow")
            info = write_shard(path, (row for _, row in rows), shard_schema(), write.config.batch_rows)
        self.stat_update("rows", value=info.rows)
        with open(os.path.join(self.output, f"part-{rank:05d}.json"), "w", encoding="utf-8") as handle:
            json.dump({"rows": info.rows}, handle)
        return iter(())


def run_datatrove(spec: str, data: str, output: str, workers: int, logs: str) -> int:
    from datatrove.executor import LocalPipelineExecutor

    files = sorted(glob.glob(os.path.join(data, "*.parquet")))
    os.makedirs(output, exist_ok=True)
    shutil.rmtree(logs, ignore_errors=True)
    steps = [ReadTrajectories(spec, files), ToChat(spec), WriteArrow(spec, output)]
    executor = LocalPipelineExecutor(pipeline=steps, tasks=len(files), workers=workers, logging_dir=logs)
    executor.run()
    return sum(json.loads(Path(p).read_text())["rows"] for p in glob.glob(os.path.join(output, "part-*.json")))


# --- one variant in a child process ------------------------------------------------------------------


def child(variant: str, work: str, result: str) -> None:
    """Run one variant; write ``{seconds, rows, error, shards}`` to ``result``."""
    from bench.io import run_beam, run_loop, shard_hashes
    from pipelines.graph import load_plan
    from transforms.write import shard_schema

    spec, output = os.path.join(work, "bench_io.yaml"), os.path.join(work, f"out-{slug(variant)}")
    load_plan(spec)  # one-time imports stay out of the timing (as in bench.io)
    shard_schema()
    kind, argument = VARIANTS[variant]
    if kind == "datatrove":
        import datatrove.executor  # noqa: F401
    started = time.monotonic()
    rows, error = None, None
    try:
        if kind == "agentmill":
            rows = run_beam(spec, output, argument)
        elif kind == "loop":
            rows = run_loop(spec, output)
        else:
            logs = os.path.join(work, f"logs-{slug(variant)}")
            rows = run_datatrove(spec, os.path.join(work, "data"), output, argument, logs)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - started
    with open(result, "w", encoding="utf-8") as handle:
        json.dump({"seconds": seconds, "rows": rows, "error": error, "shards": shard_hashes(output)}, handle)


# --- the parent: data, interleaved rounds, table and ratios -------------------------------------------


def rounds_order(variants: list[str], rounds: int) -> list[list[str]]:
    """Each round runs every variant once; the order rotates by one each round."""
    return [variants[r % len(variants) :] + variants[: r % len(variants)] for r in range(rounds)]


def median_row(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "cpu": statistics.median(r["measured"].tree_cpu_s for r in runs),
        "rss": statistics.median(r["measured"].peak_tree_rss for r in runs),
        "load": statistics.median(r["measured"].load_before for r in runs),
    }


def ratios(medians: dict[str, dict[str, float]], key: str = "seconds") -> list[tuple[str, float, float]]:
    """(what, measured ratio of wall times, the issue's target) for what the variants allow;
    ``key="cpu"``: the same ratios of CPU seconds (what a loaded machine still measures)."""
    s = {v: m[key] for v, m in medians.items()}
    out = []
    if "agentmill in-process" in s and "plain loop" in s:
        out.append(("agentmill in-process / plain loop", s["agentmill in-process"] / s["plain loop"], 1.10))
    if "agentmill in-process" in s and "agentmill 2 workers" in s:
        out.append(("agentmill 2 workers / in-process", s["agentmill 2 workers"] / s["agentmill in-process"], 0.62))
    ours = [s[v] for v in s if v.startswith("agentmill")]
    theirs = [s[v] for v in s if v.startswith("datatrove")]
    if ours and theirs:
        out.append(("agentmill best / datatrove best", min(ours) / min(theirs), 1.00))
    if "datatrove 1 worker" in s and "datatrove 2 workers" in s:
        out.append(("datatrove 2 workers / 1 worker", s["datatrove 2 workers"] / s["datatrove 1 worker"], float("nan")))
    return out


def bench(args: argparse.Namespace) -> int:
    variants = list(VARIANTS) if not args.only else [v.strip() for v in args.only.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not have_datatrove() and any(VARIANTS[v][0] == "datatrove" for v in variants):
        print("datatrove is not installed (pip install -c constraints.txt -e .[bench]): skipping its variants")
        variants = [v for v in variants if VARIANTS[v][0] != "datatrove"]
    n = args.size
    work = work_dir(args.work_dir, "agentmill-bench-peers-", REPO)
    sources = sorted(glob.glob(str(REPO / args.source)))
    if not sources:
        raise SystemExit(f"no input matches {args.source!r} (relative to {REPO})")
    from bench.io import SPEC

    spec = {**SPEC, "name": "bench_peers", "audit": {"enabled": args.audit}}  # the others audit nothing
    data = os.path.join(work, "data")
    shutil.rmtree(data, ignore_errors=True)
    replicate_parquet(sources, data, n, args.files)
    with open(os.path.join(work, "bench_io.yaml"), "w", encoding="utf-8") as handle:
        json.dump(spec, handle, indent=2)  # JSON is YAML
    src = os.path.join(work, "src")
    code = snapshot_packages(str(REPO), PACKAGES, src)
    print(f"{n:,} trajectories in {args.files} files under {work}; code snapshot {code}; {os.cpu_count()} cores")

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for number, order in enumerate(rounds_order(variants, args.rounds), 1):
        for variant in order:
            result, log = (os.path.join(work, f"{slug(variant)}{ext}") for ext in (".json", ".log"))
            shutil.rmtree(os.path.join(work, f"out-{slug(variant)}"), ignore_errors=True)
            argv = [sys.executable, "-m", "bench.peers", "--child", variant, "--work-dir", work, "--result", result]
            print(f"round {number}/{args.rounds}: {variant} ...", flush=True)
            outcome = run_child(argv, log, src, result, variant)
            runs[variant].append(outcome)
            print(f"  {outcome['seconds']:.1f} s, load {outcome['measured'].load_before:.1f}", flush=True)

    medians = {v: median_row(r) for v, r in runs.items()}
    table = [["variant", "traj/s", "work s", "CPU s", "peak tree RSS", "load"]]
    for variant, m in medians.items():
        table.append(
            [variant, f"{n / m['seconds']:,.0f}", f"{m['seconds']:.1f}", f"{m['cpu']:.1f}", mib(int(m["rss"])),
             f"{m['load']:.1f}"]
        )  # fmt: skip
    print(f"\n{n:,} trajectories, median of {args.rounds} interleaved round(s), code snapshot {code}")
    print("\n".join(format_table(table)))
    print("\nratio                               wall (work s)  target   CPU s")
    for (what, value, target), (_, cpu, _) in zip(ratios(medians), ratios(medians, "cpu"), strict=True):
        print(f"  {what:<34} {value:13.2f}  {'' if target != target else f'<= {target:.2f}':>7}  {cpu:6.2f}")
    print(
        "\nwork s: the variant's run timed inside its process after imports (traj/s = trajectories / work s);\n"
        "CPU s: user+system of the process and all its workers (wait4, or the sum of psutil's last sample of each\n"
        "process of the tree when larger: datatrove's forkserver workers are not reaped by the child);\n"
        "load: 1-min load average at the start (above the core count = other work competed for the CPUs;\n"
        f"then compare CPU s, as wall times mostly measure the wait).\n{RSS_HOW}."
    )
    failed = [(v, r["error"]) for v, rs in runs.items() for r in rs if r["error"]]
    for variant, error in failed:
        print(f"{variant} FAILED: {error}")
    counts_ok = all(r["rows"] == n for rs in runs.values() for r in rs)
    print(f"rows written == input ({n:,}) in every run: {'yes' if counts_ok else 'NO'}")
    same = [r["shards"] for v, rs in runs.items() if VARIANTS[v][0] != "datatrove" for r in rs]
    identical = bool(same) and all(s == same[0] and s for s in same)
    if same:
        print(f"agentmill and plain-loop shards byte-identical in every run: {'yes' if identical else 'NO'}")
    with open(os.path.join(work, "peers.json"), "w", encoding="utf-8") as handle:
        summary = {"size": n, "code": code, "medians": medians, "ratios": ratios(medians)}
        json.dump({**summary, "cpu_ratios": ratios(medians, "cpu")}, handle, indent=2)
    if args.keep or args.work_dir:
        print(f"kept {work}")
    else:
        shutil.rmtree(work)
    return 0 if counts_ok and not failed and (identical or not same) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=30_000, help="trajectories to replicate (30000)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the table shows medians (1)")
    parser.add_argument("--files", type=int, default=16, help="input files the trajectories are spread over (16)")
    parser.add_argument("--only", help=f"comma-separated variants to run (default: all of {', '.join(VARIANTS)})")
    parser.add_argument("--audit", action="store_true", help="keep agentmill's data-quality audit on (off)")
    parser.add_argument("--source", default=SOURCE, help=f"parquet files to replicate, relative to the repo ({SOURCE})")
    parser.add_argument("--work-dir", help="where data and outputs go (default: a new temp dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.work_dir, args.result)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
