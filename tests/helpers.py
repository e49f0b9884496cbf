"""Small helpers shared by tests: writing specs, running them, reading outputs."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from pipelines.run import RunSummary, run_spec
from schemas import Role, Sample
from transforms.base import Failed
from transforms.read import ReadConfig, ReadFile

#: The ``publish:`` block of a spec whose test wants a run published however many records fail
#: (the publish guard off: empty outputs and any dead-letter share allowed).
PUBLISH_ANYWAY: dict[str, Any] = {"allow_empty": True, "max_dead_letter_share": 1.0}

#: Specs that test mechanics (ledgers, runners, determinism) on data picked for that purpose turn
#: the publish audit off; tests/test_audit.py and the shipped recipes' tests keep it on.
NO_AUDIT: dict[str, Any] = {"enabled": False}


def write_spec(
    directory: Path,
    steps: list[dict[str, Any]],
    name: str = "test",
    seed: int = 0,
    audit: dict[str, Any] | None = NO_AUDIT,
    publish: dict[str, Any] | None = None,
) -> Path:
    """Write a spec; ``audit`` is its ``audit:`` block (``None``: none, so every check at its
    default); ``publish`` its ``publish:`` block (``None``: none, the publish guard's defaults)."""
    path = directory / f"{name}.yaml"
    body: dict[str, Any] = {"name": name, "seed": seed, "steps": steps}
    if audit is not None:
        body["audit"] = audit
    if publish is not None:
        body["publish"] = publish
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def read_chat_write(fmt: str, paths: list[str] | str, **read_config: Any) -> list[dict[str, Any]]:
    """Steps of a read -> to_chat -> write spec."""
    return [
        {"id": "read", "type": "read", "config": {"format": fmt, "paths": paths, **read_config}},
        {"id": "chat", "type": "to_chat", "inputs": ["read"]},
        {"id": "write", "type": "write", "inputs": ["chat"], "config": {"num_shards": 2}},
    ]


def run(spec: Path, output: Path, beam_args: list[str] | None = None) -> RunSummary:
    return run_spec(str(spec), str(output), beam_args or [])


def run_recipe(spec: Path, tmp_path_factory: Any, name: str, needs: str) -> tuple[Path, RunSummary]:
    """Run a recipe once on the shared real data into a new folder ``name``: (output, summary).
    Skipped (failed under ``CI=true``) when the data set ``needs`` is absent, before running."""
    from tests.conftest import external_path

    external_path(needs)
    out = tmp_path_factory.mktemp(name) / "out"
    return out, run(spec, out)


def python_output(code: str, timeout: int = 600) -> str:
    """stdout of ``python -c code`` run in a fresh process from the repository root; the test
    fails with the end of stderr when the process does not exit 0."""
    from tests.conftest import REPO

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def shard_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("data-*.arrow"))}


def rejected(directory: Path, step: str) -> list[dict[str, Any]]:
    path = directory / "rejected" / f"{step}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def parse_file(path: Path | str, fmt: str, **config: Any) -> tuple[list[Any], list[Failed]]:
    """Run the read step's per-file function without Beam: (trajectories, failures)."""
    reader = ReadFile(ReadConfig(format=fmt, paths=[str(path)], **config), source=fmt)
    good, bad = [], []
    for outcome in reader(str(path)):
        (bad if isinstance(outcome, Failed) else good).append(outcome)
    return good, bad


MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
PORTABLE = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]
#: The embedded job server's process environment: SDK workers are separate processes started
#: from a command (``beam:env:process:v1`` itself needs a Flink or Spark job server).
PORTABLE_PROCESS = [
    "--runner=PortableRunner",
    "--job_endpoint=embed",
    "--environment_type=beam:env:harness_subprocess_python:v1",
    f"--environment_config={sys.executable} -m apache_beam.runners.worker.sdk_worker_main",
]


def courtesy_replies(samples: Iterable[Sample]) -> list[str]:
    """Supervised assistant text that thanks the user back (glaive's canned closing, which the
    recipes' ``trim_closings`` steps cut)."""
    return [
        m.content
        for s in samples
        for m in s.messages
        if m.role is Role.ASSISTANT and m.loss and re.search(r"you're welcome|不客气", m.content, re.IGNORECASE)
    ]
