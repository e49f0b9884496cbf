"""The built wheel carries everything a remote worker needs (``--extra_package``)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO
from tests.helpers import PORTABLE_PROCESS

CHECK = """
import sys, transforms, templates
from pipelines.run import run_spec
root = sys.argv[1]
assert transforms.__file__.startswith(root) and templates.__file__.startswith(root), transforms.__file__
summary = run_spec(root + "/pipelines/demo.yaml", sys.argv[2], sys.argv[3:])
print(summary.manifest.output.num_rows)
"""


@pytest.mark.slow
def test_the_wheel_alone_runs_the_demo_with_workers_in_other_processes(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(REPO),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("agentmill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("transforms/spill.py", "templates/align/default.yaml", "pipelines/demo/data/glaive_sample.json"):
        assert needed in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {**os.environ, "PYTHONPATH": str(unpacked)}  # ahead of the editable install of the repo
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(unpacked), str(tmp_path / "out"), *PORTABLE_PROCESS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 0
    assert (tmp_path / "out" / "manifest.json").exists()
