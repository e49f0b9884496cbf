"""Audit benchmark: what the data-quality audit costs, per sample and per check, and as a share of
a full ``agent_flan`` run.

``python -m bench.audit [--size 100000] [--rows-per-file 10000] [--per-check 20000] [--work-dir DIR] [--keep]``

1. The real AgentInstruct records are replicated to ``--size`` trajectories (as ``bench.scale``
   does) and a copy of ``pipelines/agent_flan.yaml`` reads them. The recipe runs twice on the
   in-process FnApiRunner, each in a fresh, measured subprocess: with its audit (as shipped) and
   with ``audit: {enabled: false}``. The audit's share of the run is
   ``(with - without) / with`` of the work seconds. Within the audited run, the seconds the SDK
   attributes to the audit (``step_seconds.publish_audit``) over all step seconds give the share
   without comparing two runs (target: under 10 %); ``--audited-only`` skips the second run.
2. Each check then runs alone, in a plain loop in this process, over the first ``--per-check``
   samples of the audited run's shards: microseconds per sample per check, and for the whole
   auditor (every check, one pass), with the recipe's own audit policy (its evaluation sets too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

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
from bench.scale import PACKAGES, RECIPES, REPLICATED, REPO

RECIPE = RECIPES["agent_flan"]


def child(spec: str, output: str, result: str) -> None:
    """Run ``spec`` in this process; write ``{seconds, rows, inputs, audited}``."""
    from pipelines.graph import load_plan
    from pipelines.run import run_spec
    from transforms.write import shard_schema

    plan = load_plan(spec)
    shard_schema()
    started = time.monotonic()
    manifest = run_spec(spec, output, []).manifest
    seconds = time.monotonic() - started
    inputs = sum(manifest.steps[s.id].in_ for s in plan.steps if s.spec.type == "read")
    outcome = {
        "seconds": seconds,
        "rows": manifest.output.num_rows,
        "inputs": inputs,
        "audited": manifest.audit is not None,
        "step_seconds": manifest.run.get("step_seconds", {}),
    }
    with open(result, "w", encoding="utf-8") as handle:
        json.dump(outcome, handle)


def per_check(output: str, limit: int) -> list[list[str]]:
    """Microseconds per sample of each check alone and of the whole auditor, plain loop, with
    the recipe's own audit policy (its options and evaluation sets, so ``eval_overlap`` runs)."""
    from itertools import islice

    from pipelines.auditing import samples_of_shards, shard_files
    from pipelines.graph import load_plan
    from schemas import AuditPolicy, CheckPolicy
    from transforms.quality.auditor import Auditor
    from transforms.quality.checks import CHECKS

    samples = list(islice(samples_of_shards(shard_files(output)), limit))
    rows = [["check", "us/sample", "samples"]]
    plan = load_plan(str(RECIPE))
    recipe = plan.spec.audit

    def timed(policy: AuditPolicy) -> float:
        auditor = Auditor(policy, plan.base_dir)
        auditor.setup()
        state = auditor.new_state()
        started = time.perf_counter()
        for sample in samples:
            auditor.observe(state, sample)
        auditor.finish(state)
        return 1e6 * (time.perf_counter() - started) / max(1, len(samples))

    rules = {other: recipe.checks.get(other, CheckPolicy()) for other in CHECKS}
    for name in CHECKS:
        alone = {other: rule.model_copy(update={"enabled": other == name}) for other, rule in rules.items()}
        only = recipe.model_copy(update={"checks": alone})
        if name in Auditor(only, plan.base_dir).checks:
            rows.append([name, f"{timed(only):.1f}", f"{len(samples):,}"])
    rows.append(["all checks (one auditor)", f"{timed(recipe):.1f}", f"{len(samples):,}"])
    return rows


def bench(args: argparse.Namespace) -> int:
    work = work_dir(args.work_dir, "agentmill-bench-audit-", REPO)
    src = os.path.join(work, "src")
    code = snapshot_packages(str(REPO), PACKAGES, src)
    print(f"work dir {work}; code snapshot {code}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    data = os.path.join(work, f"data-{args.size}")
    if not os.path.isdir(data):
        sources = recipe_copy(RECIPE, work, data, REPLICATED, "probe.json")
        print(f"replicating {len(sources)} AgentInstruct files to {args.size:,} trajectories ...", flush=True)
        replicate_parquet(sources, data, args.size, max(1, -(-args.size // args.rows_per_file)), vary=True)
    results = {}
    for variant in ("audited", "not audited")[: 1 if args.audited_only else 2]:
        name = variant.replace(" ", "-")
        spec = os.path.join(work, f"{name}.json")
        recipe_copy(RECIPE, work, data, REPLICATED, os.path.basename(spec))
        if variant == "not audited":
            body = json.loads(Path(spec).read_text())
            body["audit"] = {"enabled": False}
            Path(spec).write_text(json.dumps(body, indent=2))
        output, result, log = (os.path.join(work, f"{name}{ext}") for ext in ("-out", ".result.json", ".log"))
        shutil.rmtree(output, ignore_errors=True)
        print(f"running agent_flan {variant} on {args.size:,} trajectories ...", flush=True)
        results[variant] = {
            **run_child(
                [sys.executable, "-m", "bench.audit", "--child", spec, output, result], log, src, result, variant
            ),
            "output": output,
        }
    lines = [["variant", "inputs", "rows", "work s", "traj/s", "peak tree RSS", "load"]]
    for variant, r in results.items():
        m = r["measured"]
        traj_s = f"{r['inputs'] / r['seconds']:,.0f}"
        peak, load = mib(m.peak_tree_rss), f"{m.load_before:.1f}"
        lines.append([variant, f"{r['inputs']:,}", f"{r['rows']:,}", f"{r['seconds']:.1f}", traj_s, peak, load])
    print("\n".join(format_table(lines)))
    rows = results["audited"]["rows"]
    steps = results["audited"]["step_seconds"]
    audit_s, busy_s = steps.get("publish_audit", 0.0), sum(steps.values())
    print(
        f"audit's share of the audited run's step time: {audit_s / busy_s:.1%} ({audit_s:.1f} s of {busy_s:.1f} s "
        f"the workers spent in steps; {1e6 * audit_s / max(1, rows):.0f} us per published sample; target < 10 %)"
    )
    if "not audited" in results:
        with_, without = results["audited"]["seconds"], results["not audited"]["seconds"]
        share = (with_ - without) / with_
        print(f"wall time with vs without the audit: {with_:.1f} s vs {without:.1f} s ({share:+.1%}; "
              "a difference of two runs, sensitive to the machine's load)")  # fmt: skip
    print("\nper check, plain loop over the audited run's samples:")
    print("\n".join(format_table(per_check(results["audited"]["output"], args.per_check))))
    print(f"\n{RSS_HOW}.")
    for r in results.values():
        shutil.rmtree(r["output"], ignore_errors=True)
    if not args.keep and not args.work_dir:
        shutil.rmtree(work)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="replicated trajectories (100000)")
    parser.add_argument("--rows-per-file", type=int, default=10_000)
    parser.add_argument("--per-check", type=int, default=20_000, help="samples for the per-check loop (20000)")
    parser.add_argument("--work-dir", help="where data and outputs go (default: a new temp dir, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--audited-only", action="store_true", help="skip the run without the audit")
    parser.add_argument("--child", nargs=3, metavar=("SPEC", "OUTPUT", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
