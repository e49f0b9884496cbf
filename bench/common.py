"""Helpers shared by the benchmarks: peak memory of a process tree, data replication, hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

RSS_HOW = (
    "peak tree RSS: psutil samples every 50 ms of the sum of RSS over the process and all its "
    "descendants (Beam's worker processes included); max RSS: wait4() ru_maxrss of the child, the "
    "largest single process of its tree"
)


@dataclass(frozen=True)
class Measured:
    """Outcome of one subprocess: exit status, wall and CPU seconds, memory peaks in bytes, and
    the 1-minute load average when it started (other work on the machine skews timings)."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_tree_rss: int
    max_rss: int
    load_before: float
    #: CPU seconds of every process of the tree seen by the sampler (its last sample of each):
    #: counts descendants the child never reaps (e.g. a forkserver's workers), which ``cpu_s``
    #: misses; a process shorter than one interval can be missed.
    tree_cpu_s: float = 0.0


def _tree_rss(root: psutil.Process, cpu: dict[int, float] | None = None) -> int:
    """Sum of RSS over ``root`` and its descendants; with ``cpu``, also record each one's CPU
    seconds so far (user + system) under its pid."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
            if cpu is not None:
                times = proc.cpu_times()
                cpu[proc.pid] = times.user + times.system
    return total


def measure(
    argv: Sequence[str],
    log_path: str,
    interval: float = 0.05,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Measured:
    """Run ``argv`` in a fresh process (stdout and stderr to ``log_path``) and measure its memory.

    The tree peak comes from sampling (a spike shorter than ``interval`` can be missed); the
    single-process maximum and the CPU time (user + system) come from the kernel (``wait4``), and
    cover every descendant the process waited for (Beam reaps its worker processes).
    """
    load = os.getloadavg()[0]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    root = psutil.Process(proc.pid)
    peak = 0
    seen: dict[int, float] = {}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _tree_rss(root, seen))
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, keep Popen consistent
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    # wait4 counts the child and what it reaped, exactly; the samples count every process of
    # the tree, reaped or not, up to its last sample: the larger is the better estimate.
    tree_cpu = max(cpu, sum(seen.values()))
    return Measured(proc.returncode, wall, cpu, peak, usage.ru_maxrss * 1024, load, tree_cpu)  # ru_maxrss: KiB


def _mark_copy(conversations: list[dict], copy: int) -> list[dict]:
    """AgentInstruct ``conversations`` whose first user turn ends with a ``[copy N]`` line."""
    marked = [dict(turn) for turn in conversations]
    for turn in marked:
        if turn.get("from") == "human":
            turn["value"] = f"{turn['value']}\n[copy {copy}]"
            break
    return marked


def replicate_parquet(sources: Sequence[str], out_dir: str, total: int, files: int, vary: bool = False) -> list[str]:
    """Write ``total`` records copied from ``sources`` as ``files`` parquet files in ``out_dir``.

    Copy ``r`` of a record with id ``os_12`` gets the id ``os_12__r<r>`` (unique while the source
    ids are) and a ``task`` column holding the original id's prefix (``os``), which the readers
    prefer to deriving the task from the id. With ``vary``, copies ``r >= 1`` also get a
    ``[copy r]`` line in their first user turn (AgentInstruct's ``conversations``), so they are
    not duplicates of each other. Records are otherwise unchanged.
    """
    table = pa.concat_tables([pq.read_table(path).replace_schema_metadata(None) for path in sorted(sources)])
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError("the source records' ids are not unique")
    tasks = [i.rsplit("_", 1)[0] for i in ids]
    n = table.num_rows
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    bounds = [total * f // files for f in range(files + 1)]
    for f in range(files):
        rows = range(bounds[f], bounds[f + 1])
        part = table.take(pa.array([g % n for g in rows], pa.int64()))
        part = part.set_column(
            part.schema.get_field_index("id"), "id", pa.array([f"{ids[g % n]}__r{g // n}" for g in rows], pa.string())
        )
        part = part.append_column("task", pa.array([tasks[g % n] for g in rows], pa.string()))
        if vary:
            column = part.schema.get_field_index("conversations")
            marked = [
                c if g < n else _mark_copy(c, g // n)
                for g, c in zip(rows, part.column(column).to_pylist(), strict=True)
            ]
            part = part.set_column(column, "conversations", pa.array(marked, part.schema.field(column).type))
        path = os.path.join(out_dir, f"part-{f:05d}.parquet")
        pq.write_table(part, path)
        paths.append(path)
    return paths


def _absolute_paths(base: Path, paths: str | list[str]) -> list[str]:
    return [os.path.normpath(base / p) for p in ([paths] if isinstance(paths, str) else paths)]


def recipe_copy(recipe: Path, work: str, data: str, replicated: str, name: str) -> list[str]:
    """Write a copy of ``recipe`` as ``work/name`` with absolute paths, in which step
    ``replicated`` reads ``data/*.parquet``; return the files that step originally reads."""
    from pipelines.yaml_loader import safe_load
    from transforms.files import resolve_paths

    spec = safe_load(recipe.read_text(encoding="utf-8"))

    def absolute(value: Any) -> Any:  # every ``paths`` in a config, at any depth
        if isinstance(value, dict):
            return {k: _absolute_paths(recipe.parent, v) if k == "paths" else absolute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return value

    sources: list[str] = []
    for step in spec["steps"]:
        step["config"] = absolute(step.get("config", {}))
        if step["id"] == replicated:
            sources = resolve_paths(step["config"]["paths"], str(recipe.parent))
            step["config"]["paths"] = [os.path.join(data, "*.parquet")]
    if isinstance(spec.get("audit"), dict):  # the audit's evaluation sets
        spec["audit"] = absolute(spec["audit"])
    with open(os.path.join(work, name), "w", encoding="utf-8") as handle:
        json.dump(spec, handle, indent=2)  # JSON is YAML
    return sources


def snapshot_packages(repo: str, packages: Sequence[str], dest: str) -> str:
    """Copy the Python packages of ``repo`` to ``dest`` (for ``PYTHONPATH``); return a digest of them.

    Benchmark subprocesses then all run the same code even while the working tree is being edited.
    """
    shutil.rmtree(dest, ignore_errors=True)
    digest = hashlib.sha256()
    for package in packages:
        shutil.copytree(
            os.path.join(repo, package), os.path.join(dest, package), ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in sorted(Path(dest, package).rglob("*.py")):
            digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def format_table(lines: Sequence[Sequence[str]]) -> list[str]:
    """Text table: the first line is the header, then a rule; first column left-aligned, the others right."""
    lines = [lines[0], ["-" * len(h) for h in lines[0]], *lines[1:]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    ]


def work_dir(requested: str | None, prefix: str, repo: Path) -> str:
    """The benchmark's working directory: ``requested`` or a new temp dir; never inside ``repo``."""
    work = os.path.abspath(requested or tempfile.mkdtemp(prefix=prefix))
    if Path(work).is_relative_to(repo):
        raise SystemExit(f"--work-dir {work} is inside the repository; use a directory outside it")
    os.makedirs(work, exist_ok=True)
    return work


def run_variants(module: str, variants: Sequence[str], work: str, src: str, profile: bool = False) -> dict[str, dict]:
    """Run ``python -m module --child VARIANT`` for each variant in a fresh, measured subprocess
    that imports the code snapshot ``src``; return each child's JSON result plus ``measured``."""
    results: dict[str, dict] = {}
    for variant in variants:
        name = variant.replace(" ", "-")
        result, log = os.path.join(work, f"{name}.json"), os.path.join(work, f"{name}.log")
        shutil.rmtree(os.path.join(work, f"out-{name}"), ignore_errors=True)
        argv = [sys.executable, "-m", module, "--child", variant, "--work-dir", work, "--result", result]
        if profile:
            argv[1:3] = ["-m", "cProfile", "-o", os.path.join(work, f"{name}.prof"), "-m", module]
        print(f"running {variant} ...", flush=True)
        results[variant] = run_child(argv, log, src, result, variant)
    return results


def run_child(argv: Sequence[str], log: str, src: str, result: str, what: str) -> dict:
    """Run a benchmark child on the code snapshot ``src``, measured; return the JSON it wrote
    to ``result`` plus ``measured``. A failed child ends the benchmark with its log's tail."""
    measured = measure(argv, log, env={**os.environ, "PYTHONPATH": src}, cwd=src)
    if measured.returncode != 0:
        print(Path(log).read_text(errors="replace")[-4000:], file=sys.stderr)
        raise SystemExit(f"{what} failed with exit status {measured.returncode}; log: {log}")
    with open(result, encoding="utf-8") as handle:
        return {**json.load(handle), "measured": measured}


VARIANT_HEADER = ["variant", "rows", "work s", "traj/s", "process s", "CPU s", "peak tree RSS", "max RSS", "load"]


def variant_row(variant: str, result: dict, trajectories: int) -> list[str]:
    """One line of the variants table (see :data:`VARIANT_HEADER`)."""
    m = result["measured"]
    rows = "FAILED" if result["error"] else f"{result['rows']:,}"
    return [
        variant, rows, f"{result['seconds']:.1f}", f"{trajectories / result['seconds']:,.0f}", f"{m.wall_s:.1f}",
        f"{m.cpu_s:.1f}", mib(m.peak_tree_rss), mib(m.max_rss), f"{m.load_before:.1f}",
    ]  # fmt: skip
