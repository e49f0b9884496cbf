"""Shard integrity: ``agentmill verify``, ``inspect`` and training refuse an output whose shards
do not match its manifest (issue 15, items 6 and 14)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from schemas.integrity import IntegrityError, verify_output
from tests.conftest import DEMO_DATA, REPO
from tests.helpers import run, write_spec

AGENTMILL = [sys.executable, "-m", "pipelines.cli"]


def agentmill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENTMILL, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    """A small real output: 2 shards written one row per record batch, so a shard can be cut at
    a batch boundary and still be a valid Arrow stream."""
    base = tmp_path_factory.mktemp("verify")
    steps = [
        {
            "id": "read",
            "type": "read",
            "config": {"format": "agentinstruct", "paths": str(DEMO_DATA / "agentinstruct_sample.jsonl")},
        },
        {"id": "chat", "type": "to_chat", "inputs": ["read"]},
        {"id": "write", "type": "write", "inputs": ["chat"], "config": {"num_shards": 2, "batch_rows": 1}},
    ]
    out = base / "out"
    run(write_spec(base, steps), out)
    return out


def damaged_copy(intact: Path, tmp_path: Path) -> Path:
    out = tmp_path / "damaged"
    shutil.copytree(intact, out)
    return out


def biggest_shard(directory: Path) -> tuple[str, int]:
    shards = json.loads((directory / "manifest.json").read_text())["output"]["shards"]
    best = max(shards, key=lambda s: s["rows"])
    return best["filename"], best["rows"]


def cut_after_first_batch(path: Path) -> int:
    """Truncate an Arrow IPC stream right after its first record batch; return its rows."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        rows = reader.read_next_batch().num_rows
        end = source.tell()
    data = path.read_bytes()
    path.write_bytes(data[:end])
    return rows


def test_an_intact_output_verifies(intact):
    result = agentmill("verify", str(intact))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok") == 2 and "sha256 match" in result.stderr
    assert verify_output(str(intact)).ok


def test_a_shard_cut_at_a_batch_boundary_is_refused_by_verify_inspect_and_training(intact, tmp_path):
    out = damaged_copy(intact, tmp_path)
    name, rows = biggest_shard(out)
    kept = cut_after_first_batch(out / name)
    total = json.loads((out / "manifest.json").read_text())["output"]["num_rows"]
    # The silent failure: datasets reads the cut stream without a word.
    assert datasets.load_from_disk(str(out)).num_rows == total - rows + kept < total

    result = agentmill("verify", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert f"MISMATCH {name}" in text and f"{kept} rows, manifest says {rows}" in text
    assert "sha256" in text and "Traceback" not in result.stderr

    inspect = agentmill("inspect", str(out))
    assert inspect.returncode == 2 and "Traceback" not in inspect.stderr
    assert name in inspect.stderr and "does not match its manifest" in " ".join(inspect.stderr.split())

    from train.data import load_samples

    with pytest.raises(IntegrityError, match=f"{name}: .*{kept} rows, manifest says {rows}"):
        load_samples([str(out)])


def test_train_sft_refuses_a_damaged_output(intact, tmp_path):
    from train.tiny import build

    tok_dir, model_config = build([str(intact)], str(tmp_path / "tiny"), vocab_size=300)
    out = damaged_copy(intact, tmp_path)
    name, _ = biggest_shard(out)
    cut_after_first_batch(out / name)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    args = ["--data", str(out), "--tokenizer", str(tok_dir), "--model-config", str(model_config)]
    proc = subprocess.run(
        [sys.executable, str(REPO / "train" / "sft.py"), *args, "--output", str(tmp_path / "run"), "--max-steps", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "does not match its manifest" in proc.stderr and name in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_each_kind_of_damage_is_named(intact, tmp_path):
    out = damaged_copy(intact, tmp_path)
    shards = json.loads((out / "manifest.json").read_text())["output"]["shards"]
    first, second = shards[0]["filename"], shards[1]["filename"]
    # Same size, one byte changed near the end (inside the last batch's data).
    data = bytearray((out / first).read_bytes())
    data[-20] ^= 0xFF
    (out / first).write_bytes(bytes(data))
    (out / second).unlink()
    result = verify_output(str(out))
    assert not result.ok
    problems = dict(line.split(": ", 1) for line in result.failures())
    assert "sha256" in problems[first] and "bytes" not in problems[first]
    assert problems[second] == "missing"
    assert result.shards[0].sha256 == hashlib.sha256(bytes(data)).hexdigest()

    state = json.loads((out / "state.json").read_text())
    state["_data_files"] = state["_data_files"][:1]
    (out / "state.json").write_text(json.dumps(state))
    assert any("state.json lists" in p for p in verify_output(str(out)).problems)


def test_inspect_on_a_directory_missing_its_shards_is_one_line(intact, tmp_path):
    out = damaged_copy(intact, tmp_path)
    for shard in out.glob("data-*.arrow"):
        shard.unlink()
    result = agentmill("inspect", str(out))
    assert result.returncode == 2, result.stderr
    message = result.stderr.replace("\n", "")
    assert "Traceback" not in message and "missing" in message and str(out) in message
    verify = agentmill("verify", str(out))
    assert verify.returncode == 1 and verify.stdout.count("missing") == 2


def test_verify_without_a_manifest_exits_2(tmp_path):
    for directory in (tmp_path, tmp_path / "absent"):
        result = agentmill("verify", str(directory))
        assert result.returncode == 2 and "no manifest.json" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "manifest.json").write_text("{not json")
    result = agentmill("verify", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_remote_output_is_verified_through_its_filesystem(intact, tmp_path):
    from pipelines.verify import verify
    from tests.fake_remote_fs import PREFIX, local_path

    remote = f"{PREFIX}{tmp_path.name}/out"
    shutil.copytree(intact, local_path(remote))
    assert verify(remote).ok and verify(remote, hashes=False).ok
    name, rows = biggest_shard(intact)
    kept = cut_after_first_batch(Path(local_path(remote)) / name)
    for hashes in (True, False):
        result = verify(remote, hashes=hashes)
        assert [s.expected.filename for s in result.shards if not s.ok] == [name]
        assert f"{kept} rows, manifest says {rows}" in result.failures()[0]
    assert ("sha256" in verify(remote).failures()[0]) and ("sha256" not in verify(remote, False).failures()[0])


def test_inspect_checks_sizes_and_rows_and_verify_the_sha256(intact, tmp_path):
    out = damaged_copy(intact, tmp_path)
    name, _ = biggest_shard(out)
    data = bytearray((out / name).read_bytes())
    data[-20] ^= 0xFF  # same size, same rows: only the sha256 tells
    (out / name).write_bytes(bytes(data))
    assert agentmill("inspect", str(out)).returncode == 0
    assert agentmill("verify", "--no-hash", str(out)).returncode == 0
    assert agentmill("verify", str(out)).returncode == 1
