"""Runs killed with SIGKILL at any moment never leave a directory that looks complete, and the
next run cleans up and writes the same shards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.publish import MARKER, is_agentmill_output, work_dir_for
from tests.conftest import REPO
from tests.helpers import run, shard_hashes

SPEC = REPO / "pipelines" / "demo.yaml"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    run(SPEC, out)
    return shard_hashes(out)


def start_run(output) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipelines.cli", "run", str(SPEC), "--output", str(output), "-q"]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 2.0, 4.0, 6.0, 8.0])
def test_sigkill_at_any_moment_leaves_nothing_that_looks_complete(tmp_path, reference, delay):
    output = tmp_path / "out"
    process = start_run(output)
    time.sleep(delay)
    with contextlib.suppress(ProcessLookupError):  # the group is gone if the run already ended
        os.killpg(process.pid, signal.SIGKILL)  # the run and any worker processes it started
    finished = process.wait() == 0
    work = work_dir_for(str(output))
    if output.exists():
        # only a run that got to publish leaves the output, and then it is complete
        assert is_agentmill_output(str(output)) and shard_hashes(output) == reference
        assert not os.path.exists(os.path.join(output, MARKER))
    else:
        assert not finished
    if os.path.exists(work):
        assert os.path.exists(os.path.join(work, MARKER))  # recognisably incomplete
    summary = run(SPEC, output)  # the next run cleans up and publishes the same shards
    assert shard_hashes(output) == reference
    assert summary.manifest.output.num_rows > 0
    assert not os.path.exists(work) and not os.path.exists(f"{work}.old")


def test_a_previous_output_moved_aside_by_a_crashed_publish_is_cleaned(tmp_path, reference):
    output = tmp_path / "out"
    run(SPEC, output)
    old = f"{work_dir_for(str(output))}.old"
    os.rename(output, old)  # as if the run crashed between moving the old output and publishing
    run(SPEC, output)
    assert not os.path.exists(old) and shard_hashes(output) == reference
