"""End-to-end runs: real AgentInstruct counts, the ledger, determinism across runners, publishing."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest

from pipelines.errors import OutputError, SpecError
from pipelines.publish import work_dir_for
from tests.conftest import AGENTINSTRUCT_SPLITS, DEMO_DATA
from tests.helpers import (
    MULTI_PROCESS,
    PORTABLE,
    PORTABLE_PROCESS,
    PUBLISH_ANYWAY,
    read_chat_write,
    rejected,
    run,
    shard_hashes,
    write_spec,
)


@pytest.fixture(scope="module")
def agentinstruct_run(tmp_path_factory, request):
    from tests.conftest import external_path

    pattern = str(external_path("agentinstruct_thudm") / "*.parquet")
    tmp = tmp_path_factory.mktemp("ai")
    spec = write_spec(tmp, read_chat_write("agentinstruct", pattern, source="agentinstruct"))
    summary = run(spec, tmp / "out")
    return spec, tmp, summary


@pytest.mark.real_data
def test_agentinstruct_counts_and_loss_flags_survive(agentinstruct_run, external):
    import glob

    from tests.helpers import parse_file

    _, tmp, summary = agentinstruct_run
    steps = summary.manifest.steps
    assert steps["read"].in_ == steps["read"].passed == 1465
    assert all(not s.dead_letter and not s.filtered for s in steps.values())
    dataset = datasets.load_from_disk(str(tmp / "out"))
    assert dataset.num_rows == 1465
    assert Counter(row["task"] for row in dataset["lineage"]) == AGENTINSTRUCT_SPLITS
    source_true = sum(
        t.loss
        for p in sorted(glob.glob(str(external("agentinstruct_thudm") / "*.parquet")))
        for traj in parse_file(p, "agentinstruct")[0]
        for t in traj.turns
    )
    shard_true = sum(m["loss"] for messages in dataset["messages"] for m in messages)
    assert shard_true == source_true == 7547
    assert summary.manifest.output.supervised_tokens == sum(c["supervised_tokens"] for c in dataset["counts"])


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "runner_args",
    [MULTI_PROCESS, PORTABLE, PORTABLE_PROCESS],
    ids=["multi_processing", "portable_embed", "portable_process"],
)
def test_shards_are_byte_identical_across_runners(agentinstruct_run, runner_args):
    spec, tmp, _ = agentinstruct_run
    other = tmp / f"out-{runner_args[0].split('=')[1]}"
    run(spec, other, runner_args)
    assert shard_hashes(other) == shard_hashes(tmp / "out")
    assert len(shard_hashes(other)) == 2


def test_rerun_is_byte_identical_and_replaces_earlier_output(tmp_path):
    spec = write_spec(tmp_path, read_chat_write("agentinstruct", str(DEMO_DATA / "agentinstruct_sample.jsonl")))
    first = run(spec, tmp_path / "out")
    hashes = shard_hashes(tmp_path / "out")
    second = run(spec, tmp_path / "out")
    assert shard_hashes(tmp_path / "out") == hashes
    assert [s.sha256 for s in first.manifest.output.shards] == [s.sha256 for s in second.manifest.output.shards]
    assert not work_dir_for(str(tmp_path / "out")).startswith(str(tmp_path / "out") + "/")
    assert not (tmp_path / ".out.agentmill-tmp").exists()


def test_ledger_accounts_for_bad_records_and_rejected_files_name_them(tmp_path):
    good = (DEMO_DATA / "agentinstruct_sample.jsonl").read_text().splitlines()
    no_supervision = {
        "id": "os_99",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "loss": False, "value": "Ok."}],
    }
    lines = [
        *good,
        "{truncated",
        '{"id": "os_5", "conversations": [{"from": "alien", "value": "x"}]}',
        json.dumps(no_supervision),
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    spec = write_spec(tmp_path, read_chat_write("agentinstruct", ["data.jsonl", "empty.jsonl"]))
    summary = run(spec, tmp_path / "out")
    read, chat, write = (summary.manifest.steps[k] for k in ("read", "chat", "write"))
    assert read.in_ == len(good) + 4
    assert read.dead_letter == {"invalid_json": 1, "unknown_role": 1, "empty_file": 1}
    assert chat.filtered == {"no_supervised_turn": 1}
    assert write.in_ == write.passed == len(good) == summary.manifest.output.num_rows
    for ledger in summary.manifest.steps.values():
        assert ledger.balanced()
    dead = rejected(tmp_path / "out", "read")
    assert sorted((d["reason"], d["location"]) for d in dead) == [
        ("empty_file", "empty.jsonl"),
        ("invalid_json", f"data.jsonl:line {len(good) + 1}"),
        ("unknown_role", f"data.jsonl:line {len(good) + 2}"),
    ]
    assert [d["reason"] for d in rejected(tmp_path / "out", "chat")] == ["no_supervised_turn"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["steps"]["read"]["in"] == read.in_
    assert {i["path"].rsplit("/", 1)[1] for i in manifest["inputs"]} == {"data.jsonl", "empty.jsonl"}


def test_output_that_is_not_ours_is_never_overwritten(tmp_path):
    spec = write_spec(tmp_path, read_chat_write("agentinstruct", str(DEMO_DATA / "agentinstruct_sample.jsonl")))
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="refusing to overwrite"):
        run(spec, target)
    assert (target / "thesis.tex").read_text() == "years of work"


def test_missing_input_path_fails_before_running(tmp_path):
    spec = write_spec(tmp_path, read_chat_write("agentinstruct", "nowhere/*.jsonl"))
    with pytest.raises(SpecError, match="matched no files") as info:
        run(spec, tmp_path / "out")
    assert info.value.step_id == "read"
    assert not (tmp_path / "out").exists()


def test_empty_input_still_writes_a_loadable_dataset(tmp_path):
    data = tmp_path / "only_bad.jsonl"
    data.write_text("{nope\n")
    steps = read_chat_write("agentinstruct", str(data))
    summary = run(write_spec(tmp_path, steps, publish=PUBLISH_ANYWAY), tmp_path / "out")
    assert summary.manifest.output.num_rows == 0
    assert datasets.load_from_disk(str(tmp_path / "out")).num_rows == 0


@pytest.mark.slow
def test_the_demo_pipeline_is_byte_identical_on_every_runner(tmp_path):
    from tests.conftest import REPO

    spec = REPO / "pipelines" / "demo.yaml"
    run(spec, tmp_path / "in_process")
    reference = shard_hashes(tmp_path / "in_process")
    for name, args in (("multi", MULTI_PROCESS), ("portable", PORTABLE), ("process", PORTABLE_PROCESS)):
        run(spec, tmp_path / name, args)
        assert shard_hashes(tmp_path / name) == reference, name
