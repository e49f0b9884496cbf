"""bench.shuffles: without spilling (Dataflow, Flink, Spark) records cross stages in inline runs."""

from __future__ import annotations

from bench.shuffles import measure
from tests.conftest import REPO


def test_the_demo_shuffles_runs_not_records_at_every_crossing():
    rows = {name: (records, shuffled) for name, records, shuffled in measure(str(REPO / "pipelines" / "demo.yaml"), [])}
    crossings = {name: counts for name, counts in rows.items() if counts[0]}
    assert {"write/Sort", "Run/Rejected/Sort", "align/AwaitThresholds", "negatives/Merge"} <= set(crossings)
    assert crossings["write/Sort"] == (27, 1)  # the demo's 27 samples, one sorted run
    for name, (records, shuffled) in crossings.items():
        assert 1 <= shuffled < records, name  # one element per run (each bundle's), never per record
