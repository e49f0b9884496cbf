"""What crosses stage boundaries on a runner that shuffles: records in, elements shuffled.

    python -m bench.shuffles [SPEC] [-- BEAM_ARGS...]

Runs ``SPEC`` (default: the agent_flan recipe on the shared data) on the in-process FnApiRunner
*without* spilling, the way it runs on Dataflow, Flink and Spark, and reads the runner's element
counts. For each crossing of :mod:`transforms.spill` (the barriers of count-then-select steps,
the sorts of ``write``, ``dedup``, ``mix`` and the rejected files) it prints the records that
enter it and the elements that reach its GroupByKey, the shuffle of a distributed runner: with
runs inline, one element per run of about ``RUN_BYTES``, where a per-record design shuffles one
per record. GroupByKeys inside combines are left out (runners lift them: they shuffle one
accumulator per key and bundle). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import Counter
from typing import Any

from bench.io import REPO

RECIPE = REPO / "pipelines" / "agent_flan.yaml"
#: The transforms through which a crossing's records enter it (transforms/spill.py).
_ENTRY = re.compile(r"^(?P<crossing>.+)/(?:Spill\d+|SortRuns\d*)$")


def _element_counts(result: Any) -> Counter[str]:
    from apache_beam.metrics import monitoring_infos
    from apache_beam.portability import common_urns

    urn = common_urns.monitoring_info_specs.ELEMENT_COUNT.spec.urn
    counts: Counter[str] = Counter()
    for info in result.monitoring_infos():
        if info.urn == urn and info.labels.get("PCOLLECTION"):
            counts[info.labels["PCOLLECTION"]] += monitoring_infos.extract_counter_value(info)
    return counts


def crossings(proto: Any, counts: Counter[str]) -> list[tuple[str, int, int]]:
    """``(crossing, records in, elements shuffled)`` for each crossing of the pipeline ``proto``;
    GroupByKeys outside crossings and combines are listed as their own rows (records in: 0)."""
    from apache_beam.portability import common_urns

    transforms = proto.components.transforms.values()
    lifted = {  # the GroupByKeys of combines
        child
        for transform in transforms
        if transform.spec.urn == common_urns.composites.COMBINE_PER_KEY.urn
        for child in transform.subtransforms
    }
    records: Counter[str] = Counter()
    for transform in transforms:
        if (match := _ENTRY.match(transform.unique_name)) and transform.inputs:
            records[match["crossing"]] += sum(counts[pc] for pc in transform.inputs.values())
    shuffled: Counter[str] = Counter()
    for transform_id, transform in proto.components.transforms.items():
        if transform.spec.urn != common_urns.primitives.GROUP_BY_KEY.urn or transform_id in lifted:
            continue
        name = transform.unique_name
        owner = next((c for c in records if name.startswith(c + "/")), name)
        shuffled[owner] += sum(counts[pc] for pc in transform.inputs.values())
    names = sorted(set(records) | set(shuffled), key=lambda n: (-records[n], -shuffled[n], n))
    return [(name, records[name], shuffled[name]) for name in names]


def measure(spec: str, beam_args: list[str]) -> list[tuple[str, int, int]]:
    """Run ``spec`` without spilling; return :func:`crossings` of the run."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from pipelines.run import run_spec

    seen: dict[str, Any] = {}
    original = fn_runner.FnApiRunner.run_via_runner_api

    def capture(self: Any, pipeline_proto: Any, options: Any) -> Any:
        seen["proto"] = pipeline_proto
        seen["result"] = original(self, pipeline_proto, options)
        return seen["result"]

    fn_runner.FnApiRunner.run_via_runner_api = capture  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(prefix="shuffles_") as work:
            run_spec(spec, f"{work}/out", beam_args, spill=False)
    finally:
        fn_runner.FnApiRunner.run_via_runner_api = original  # type: ignore[method-assign]
    return crossings(seen["proto"], _element_counts(seen["result"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", default=str(RECIPE))
    parser.add_argument("beam_args", nargs="*")
    args = parser.parse_args(argv)
    rows = measure(args.spec, args.beam_args)
    print(f"{'crossing':<48} {'records in':>12} {'shuffled':>10}")
    for name, records, shuffled in rows:
        print(f"{name:<48} {records:>12,} {shuffled:>10,}")
    records = sum(r for _, r, _ in rows)
    shuffled = sum(s for _, r, s in rows if r)
    other = sum(s for _, r, s in rows if not r)
    print(f"{'crossings':<48} {records:>12,} {shuffled:>10,}")
    print(f"{'other GroupByKeys (ids, file names, plans)':<48} {'':>12} {other:>10,}")
    if shuffled:
        print(f"records per shuffled element at the crossings: {records / shuffled:,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
