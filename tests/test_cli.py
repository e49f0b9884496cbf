"""The agentmill command as a user runs it: exit codes, messages, no tracebacks for user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets

from tests.conftest import REPO

AGENTMILL = [sys.executable, "-m", "pipelines.cli"]


def agentmill(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENTMILL, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_validate_graph_run_inspect_on_the_demo(tmp_path):
    result = agentmill("validate", "pipelines/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stderr
    graph = agentmill("graph", "pipelines/demo.yaml")
    assert graph.stdout.startswith("flowchart LR") and "balance --> write" in graph.stdout
    out = tmp_path / "demo"
    result = agentmill("run", "pipelines/demo.yaml", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and "ledger" in result.stderr
    assert datasets.load_from_disk(str(out)).num_rows > 0
    inspect = agentmill("inspect", str(out))
    assert inspect.returncode == 0 and "rows" in inspect.stdout and "messages" in inspect.stdout


def test_beam_options_pass_through_after_double_dash(tmp_path):
    result = agentmill(
        "run", "pipelines/demo.yaml", "--output", str(tmp_path / "o"), "-q", "--", "--direct_num_workers=1"
    )
    assert result.returncode == 0, result.stderr
    assert "'--direct_num_workers=1'" in (tmp_path / "o" / "manifest.json").read_text().replace('"', "'")


def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps:\n  - {id: r, type: nope}\n")
    cases = [
        agentmill("validate", str(bad)),
        agentmill("run", str(bad), "--output", str(tmp_path / "o")),
        agentmill("validate", str(tmp_path / "missing.yaml")),
        agentmill("inspect", str(tmp_path)),
    ]
    for result in cases:
        assert result.returncode == 2, result.stderr
        assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert "unknown step type 'nope'" in cases[0].stderr.replace("\n", " ")
