"""The worked example of docs/extending.md runs, and gives the ledger the docs show."""

from __future__ import annotations

import sys

import pytest

from pipelines.run import run_spec
from tests.conftest import REPO
from tests.helpers import rejected

EXAMPLES = REPO / "docs" / "examples"


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    sys.modules.pop("drop_long_samples", None)


def test_the_custom_steps_run_and_account_for_every_record(tmp_path, examples_on_path):
    summary = run_spec(str(EXAMPLES / "drop_long.yaml"), str(tmp_path / "out"), [])
    steps = summary.manifest.steps
    drop, take = steps["drop_long"], steps["take"]
    assert (drop.in_, drop.passed, drop.filtered) == (11, 10, {"too_long": 1})
    assert (take.in_, take.passed, take.filtered) == (10, 6, {"not_selected": 4})
    assert summary.manifest.output.num_rows == 6
    assert summary.manifest.run["spilled"] and not (tmp_path / "out" / "_spill").exists()
    losers = rejected(tmp_path / "out", "take")
    assert len(losers) == 4 and all(r["record_id"] and r["payload"] == "" for r in losers)
