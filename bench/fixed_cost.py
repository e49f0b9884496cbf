"""The fixed cost of a run: ``agentmill validate`` and ``agentmill run`` of the demo (13 inputs).

    python -m bench.fixed_cost [--repeat 5] [--baseline DIR]

Runs each command ``--repeat`` times, interleaved (validate, run, validate, run, ...), each in a
fresh process, and prints the median wall and CPU seconds (user + system of the process and the
processes it waited for) and the load average before each. With ``--baseline DIR`` (a checkout of
another commit, e.g. ``git worktree add /tmp/before HEAD~3``) the same commands run from that
folder too, interleaved with this checkout's, so both see the same machine. On a shared machine,
compare CPU seconds; wall seconds need a quiet one.

This machine's speed also drifts by up to 1.5x within an hour at the same low load (the same
demo run took 2.5 s and 3.7 s twenty minutes apart), so each repeat also times a fixed
pure-Python workload (:data:`REFERENCE`, the ``reference`` row): compare runs measured at
different times by their ratio to it.

Each tree's packages are byte-compiled first (``compileall``), as an installed package is: on
a machine with ``PYTHONDONTWRITEBYTECODE=1`` (this one) a checkout without ``__pycache__``
otherwise compiles every module on every start (about 0.3 s of ``validate``), which made a
fresh ``--baseline`` worktree look slower than it is.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import measure

REPO = Path(__file__).resolve().parents[1]
SPEC = "pipelines/demo.yaml"
PACKAGES = ("schemas", "transforms", "pipelines", "inference", "train", "evals", "bench")
#: A fixed CPU-bound workload without imports (about 1 s on this machine on a fast day).
REFERENCE = "total = 0\nfor i in range(12_000_000):\n    total += i * i % 7\n"


def commands(output: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "pipelines.cli"]
    return {"validate": [*cli, "validate", SPEC], "run": [*cli, "run", SPEC, "-o", output, "-q"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", help="another checkout to measure the same way, interleaved")
    args = parser.parse_args(argv)
    trees = {"this": str(REPO)}
    if args.baseline:
        trees = {"baseline": os.path.abspath(args.baseline), **trees}
    for folder in trees.values():
        for package in PACKAGES:
            if os.path.isdir(os.path.join(folder, package)):
                compileall.compile_dir(os.path.join(folder, package), quiet=1)
    scratch = tempfile.mkdtemp(prefix="fixed_cost_")
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for repeat in range(args.repeat):
            m = measure([sys.executable, "-c", REFERENCE], os.path.join(scratch, f"reference-{repeat}.log"))
            results.setdefault(("machine", "reference"), []).append((m.wall_s, m.cpu_s, m.load_before))
            for tree, folder in trees.items():
                output = os.path.join(scratch, f"{tree}-{repeat}")
                for name, argv_ in commands(output).items():
                    env = {**os.environ, "PYTHONPATH": folder}
                    m = measure(argv_, os.path.join(scratch, f"{tree}-{name}-{repeat}.log"), env=env, cwd=folder)
                    if m.returncode != 0:
                        print(f"{tree} {name} failed (exit {m.returncode}); log in {scratch}", file=sys.stderr)
                        return 1
                    results.setdefault((tree, name), []).append((m.wall_s, m.cpu_s, m.load_before))
                shutil.rmtree(output, ignore_errors=True)
        reference = statistics.median(cpu for _, cpu, _ in results[("machine", "reference")])
        print("| tree | command | median wall s | median CPU s | CPU / reference | load before (median) | runs |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for (tree, name), rows in results.items():
            walls, cpus, loads = zip(*rows, strict=True)
            print(
                f"| {tree} | {name} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} "
                f"| {statistics.median(cpus) / reference:.2f} | {statistics.median(loads):.1f} | {len(rows)} |"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
