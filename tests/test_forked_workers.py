"""Multi-processing workers forked from a warm zygote (pipelines/forked_workers.py): the same
results as Beam's cold-started workers, still descendants of the runner, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import environments

from pipelines import forked_workers
from pipelines.forked_workers import CLIENT_CODE, ForkedWorkersRunner
from pipelines.run import make_options
from tests.conftest import DEMO_DATA, REPO
from tests.helpers import MULTI_PROCESS, read_chat_write, write_spec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")

#: Runs in a fresh interpreter (forking needs a process that has not run gRPC yet): a marker set
#: in the runner before the run is what a forked worker sees (a cold one imports the module afresh).
MARKER_PIPELINE = """
import gc, os, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from pipelines import forked_workers
import marker_module

marker_module.MARKER = "warm"
runner = forked_workers.ForkedWorkersRunner()
options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
pipeline = beam.Pipeline(runner=runner, options=options)
marks = pipeline | beam.Create([1, 2, 3, 4]) | beam.Map(marker_module.marker)
assert_that(marks, equal_to([sys.argv[1]] * 4))
frozen = pipeline | "One" >> beam.Create([1]) | "Frozen" >> beam.Map(marker_module.frozen)
assert_that(frozen, equal_to([sys.argv[1] == "warm"]), label="CheckFrozen")
with forked_workers.forked_workers(runner, options):
    assert (runner._worker_command is not None) == (sys.argv[1] == "warm")
    pipeline.run().wait_until_finish()
assert runner._worker_command is None
assert gc.get_freeze_count() == 0  # the runner's own process is left as it was
try:
    os.waitpid(-1, os.WNOHANG)
except ChildProcessError:  # the zygote and its workers are all reaped
    print("no children left")
"""


def _run_marker_pipeline(tmp_path, expected: str, **env: str) -> subprocess.CompletedProcess[str]:
    module = (
        'import gc\n\nMARKER = "cold"\n\n\ndef marker(_):\n    return MARKER\n\n\n'
        "def frozen(_):\n    return gc.get_freeze_count() > 0\n"
    )
    (tmp_path / "marker_module.py").write_text(module)
    paths = os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", MARKER_PIPELINE, expected],
        env={**os.environ, "PYTHONPATH": paths, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_workers_are_forked_from_the_runner_and_reaped(tmp_path):
    done = _run_marker_pipeline(tmp_path, "warm")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no children left" in done.stdout


def test_switched_off_the_workers_start_cold(tmp_path):
    done = _run_marker_pipeline(tmp_path, "cold", **{forked_workers.SWITCH: "0"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_without_a_zygote_the_runner_keeps_beams_worker_command():
    runner = ForkedWorkersRunner()
    cold = environments.SubprocessSDKEnvironment.from_command_string(command_string="python -m beam_worker")
    runner._default_environment = cold  # what the FnApiRunner sets for multi_processing
    assert runner._default_environment is cold
    runner._worker_command = "python -S -c client"
    assert runner._default_environment.command_string == "python -S -c client"
    runner._worker_command = None
    assert runner._default_environment is cold


def test_switching_it_off_gives_beams_own_runner(monkeypatch):
    monkeypatch.setenv(forked_workers.SWITCH, "0")
    _, runner = make_options(MULTI_PROCESS)
    assert type(runner) is FnApiRunner
    monkeypatch.setenv(forked_workers.SWITCH, "1")
    assert isinstance(make_options(MULTI_PROCESS)[1], ForkedWorkersRunner)


def test_a_client_that_cannot_reach_the_zygote_starts_beams_worker_instead(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CONTROL_API_SERVICE_DESCRIPTOR"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", CLIENT_CODE, str(tmp_path / "no-such.sock")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0  # Beam's worker, without a control address, stops at once
    assert "CONTROL_API_SERVICE_DESCRIPTOR" in done.stderr


SHARDS_THREE_WAYS = """
import json, sys
from pathlib import Path
from tests.helpers import MULTI_PROCESS, run, shard_hashes
spec, out = Path(sys.argv[1]), Path(sys.argv[2])
run(spec, out / "in-process")
run(spec, out / "forked", MULTI_PROCESS)  # the process's first gRPC run: forked workers
run(spec, out / "cold", MULTI_PROCESS)  # gRPC has run here: Beam's cold workers
print(json.dumps({name: shard_hashes(out / name) for name in ("in-process", "forked", "cold")}))
"""


def test_forked_and_cold_workers_write_the_same_shards(tmp_path):
    spec = write_spec(tmp_path, read_chat_write("agentinstruct", str(DEMO_DATA / "agentinstruct_sample.jsonl")))
    done = subprocess.run(
        [sys.executable, "-c", SHARDS_THREE_WAYS, str(spec), str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    hashes = json.loads(done.stdout.strip().splitlines()[-1])
    assert hashes["in-process"] and hashes["forked"] == hashes["in-process"] == hashes["cold"]


def test_a_zygote_that_does_not_end_is_killed_so_the_run_does_not_hang():
    pid = os.fork()
    if pid == 0:  # a zygote whose worker never ends
        import time

        time.sleep(600)
        os._exit(0)
    forked_workers._reap(pid, seconds=0.2)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
