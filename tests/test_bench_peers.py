"""bench.peers: interleaving, ratios, and the datatrove variant doing the same work as agentmill."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest

from bench.peers import ratios, rounds_order, run_datatrove


def test_rounds_run_every_variant_once_and_rotate():
    order = rounds_order(["a", "b", "c"], 4)
    assert order == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_ratios_are_the_issues_wall_time_ratios():
    medians = {
        "agentmill in-process": {"seconds": 10.0},
        "agentmill 2 workers": {"seconds": 6.0},
        "plain loop": {"seconds": 8.0},
        "datatrove 1 worker": {"seconds": 9.0},
        "datatrove 2 workers": {"seconds": 5.0},
    }
    got = {what: (value, target) for what, value, target in ratios(medians)}
    assert [r[1] for r in ratios({v: {"cpu": 2 * m["seconds"]} for v, m in medians.items()}, "cpu")] == [
        value for _, value, _ in ratios(medians)
    ]
    assert got["agentmill in-process / plain loop"] == (1.25, 1.10)
    assert got["agentmill 2 workers / in-process"] == (0.6, 0.62)
    assert got["agentmill best / datatrove best"] == (1.2, 1.00)
    assert "datatrove 2 workers / 1 worker" in got


def test_ratios_skip_what_was_not_run():
    assert ratios({"plain loop": {"seconds": 1.0}}) == []


@pytest.mark.real_data
def test_datatrove_runs_agentmills_functions_on_each_file(external, tmp_path):
    pytest.importorskip("datatrove")
    from bench.io import SPEC

    data = tmp_path / "data"
    data.mkdir()
    for split in ("os", "kg"):
        shutil.copy(external("agentinstruct_thudm", f"{split}.shared80.parquet"), data / f"{split}.parquet")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({**SPEC, "audit": {"enabled": False}}))
    rows = run_datatrove(str(spec), str(data), str(tmp_path / "out"), 1, str(tmp_path / "logs"))
    assert rows == 146 + 251  # every trajectory of the two files becomes a sample
    shards = sorted((tmp_path / "out").glob("part-*.arrow"))
    assert len(shards) == 2
    table = pa.concat_tables([pa.ipc.open_stream(p.read_bytes()).read_all() for p in shards])
    assert table.num_rows == rows
    ids = pa.ipc.open_stream(shards[0].read_bytes()).read_all().column("id").to_pylist()
    assert ids == sorted(ids)  # each task writes its rows sorted by id
