"""The align step's per-trajectory cost, without Beam (issue 16 item 4: the phrase-book fast path).

    python -m bench.phrasing [--repeat 5] [--baseline DIR]

Aligns every AgentInstruct trajectory of ``../shared/data/external/agentinstruct_thudm`` (all six
environments, the first 80 of each: 480 trajectories) with the align step's own processor, ``--repeat`` times, and
prints the median seconds per pass and microseconds per trajectory. With ``--baseline DIR`` (a
checkout of another commit, e.g. ``git worktree add /tmp/before HEAD~3``) the same measurement
runs in a subprocess from that folder too. Each pass runs in its own process, interleaved: this
checkout with every variant through the sandbox and the standard library's JSON ("slow path",
the reference), this checkout as shipped ("fast path"), and the baseline; the samples of the two
paths must be identical (exit 1 otherwise). The baseline's may differ when other changes
between the two checkouts change the data.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "external" / "agentinstruct_thudm"
PER_FILE = 80  # the first 80 trajectories of each environment's file


def _use_slow_path() -> None:
    """Every variant through the sandbox and the standard library's indented JSON (the
    reference the fast path must equal)."""
    import transforms.align as align
    import transforms.phrasing as phrasing

    init = phrasing.PhraseBook.__init__

    def slow_init(self, *args, **kwargs) -> None:
        kwargs["fast"] = False
        init(self, *args, **kwargs)

    phrasing.PhraseBook.__init__ = slow_init
    align.dumps_indented = lambda value: json.dumps(value, ensure_ascii=False, indent=2)


def measure(repeat: int, slow: bool = False) -> dict[str, object]:
    """Align the data ``repeat`` times in this process: seconds per pass and a hash of the samples."""
    if slow:
        _use_slow_path()
    from transforms.align import Align
    from transforms.base import StepContext
    from transforms.read import ReadConfig, ReadFile

    trajectories = []
    for path in sorted(glob.glob(str(DATA / "*.parquet"))):
        reader = ReadFile(ReadConfig(format="agentinstruct", paths=[path]), source="agentinstruct")
        trajectories += [t for t in reader(path) if hasattr(t, "turns")][:PER_FILE]
    step = Align({"keep_format_share": 0.0}, StepContext(step_id="align", base_dir=str(REPO)))
    aligner = step.processor()
    seconds, digest = [], ""
    for _ in range(repeat):
        started = time.perf_counter()
        out = [o for t in trajectories for o in aligner(t)]
        seconds.append(time.perf_counter() - started)
        samples = [o.model_dump_json() for o in out if hasattr(o, "messages")]
        digest = hashlib.sha256("\n".join(samples).encode()).hexdigest()
    return {"trajectories": len(trajectories), "seconds": seconds, "samples_sha256": digest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", help="another checkout, measured the same way, interleaved")
    parser.add_argument("--json", action="store_true", help="print this checkout's raw figures as JSON")
    parser.add_argument("--slow", action="store_true", help="with --json: sandbox only, stdlib JSON")
    args = parser.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.repeat, args.slow)))
        return 0
    variants = {"this, slow path": (str(REPO), ["--slow"]), "this, fast path": (str(REPO), [])}
    if args.baseline:
        variants = {"baseline": (os.path.abspath(args.baseline), []), **variants}
    results: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    here = Path(__file__).resolve()
    for _ in range(args.repeat):
        for name, (folder, extra) in variants.items():
            env = {**os.environ, "PYTHONPATH": folder}
            command = [sys.executable, str(here), "--json", "--repeat", "3", *extra]
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 2
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| variant | trajectories | median s per pass | median µs per trajectory | samples sha256 |")
    print("|---|---:|---:|---:|---|")
    for name, runs in results.items():
        passes = [min(r["seconds"]) for r in runs]  # best of 3 passes per process, median over processes
        n = runs[0]["trajectories"]
        median = statistics.median(passes)
        print(f"| {name} | {n} | {median:.3f} | {median / n * 1e6:.0f} | {runs[0]['samples_sha256'][:16]} |")
    same = {r["samples_sha256"] for name in ("this, slow path", "this, fast path") for r in results[name]}
    print("fast and slow path give identical samples:", len(same) == 1)
    return 0 if len(same) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
