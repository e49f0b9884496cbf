"""Outputs on a non-local Beam filesystem: written, published and replaced through FileSystems."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest

from pipelines.errors import OutputError
from pipelines.publish import work_dir_for
from pipelines.run import run_spec, spill_root_for
from tests.conftest import REPO
from tests.fake_remote_fs import PREFIX, local_path
from tests.helpers import shard_hashes

SPEC = REPO / "pipelines" / "demo.yaml"


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_a_run_publishes_to_a_remote_output_like_a_local_one(tmp_path):
    remote = f"{PREFIX}{tmp_path.name}/demo"
    summary = run_spec(str(SPEC), remote, [])
    assert summary.output == remote
    published = Path(local_path(remote))
    run_spec(str(SPEC), str(tmp_path / "local"), [])
    assert shard_hashes(published) == shard_hashes(tmp_path / "local")
    names = sorted(str(p.relative_to(published)) for p in published.rglob("*") if p.is_file())
    assert names == sorted(
        str(p.relative_to(tmp_path / "local")) for p in (tmp_path / "local").rglob("*") if p.is_file()
    )
    assert (
        json.loads((published / "manifest.json").read_text())["output"]["num_rows"] == summary.manifest.output.num_rows
    )
    assert datasets.load_from_disk(str(published)).num_rows == summary.manifest.output.num_rows
    assert not Path(local_path(f"{PREFIX}{tmp_path.name}/.demo.agentmill-tmp")).exists()
    spill = spill_root_for(remote, work_dir_for(remote))
    assert summary.manifest.run["spilled"] and not spill.startswith(PREFIX) and not os.path.exists(spill)

    # A rerun replaces the earlier output; nothing of a crashed run's working files survives.
    work = Path(local_path(f"{PREFIX}{tmp_path.name}/.demo.agentmill-tmp"))
    work.mkdir()
    (work / ".agentmill-incomplete").write_text("crashed\n")
    (work / "data-00000-of-00001.arrow").write_bytes(b"partial")
    run_spec(str(SPEC), remote, [])
    assert shard_hashes(published) == shard_hashes(tmp_path / "local")
    assert not work.exists()

    # A file agentmill did not write is never deleted: the run refuses and names it.
    (published / "notes.txt").write_text("the user's\n")
    with pytest.raises(OutputError, match=r"notes\.txt"):
        run_spec(str(SPEC), remote, [])
    assert (published / "notes.txt").read_text() == "the user's\n"
    assert shard_hashes(published) == shard_hashes(tmp_path / "local")


def test_a_remote_output_that_is_not_ours_is_never_overwritten(tmp_path):
    remote = f"{PREFIX}{tmp_path.name}/foreign"
    target = Path(local_path(remote))
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("not agentmill's\n")
    with pytest.raises(OutputError, match="not an agentmill output"):
        run_spec(str(SPEC), remote, [])
    assert os.listdir(target) == ["keep.txt"]
