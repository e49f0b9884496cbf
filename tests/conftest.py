"""Shared fixtures. Real data lives in ../shared/data/external, beside the repository."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from transforms.derived_cache import CACHE_DIR_VARIABLE

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = (REPO / ".." / "shared" / "data" / "external").resolve()
DEMO_DATA = REPO / "pipelines" / "demo" / "data"
#: Trajectories per split in ../shared/data/external/agentinstruct_thudm (its PROVENANCE.md).
AGENTINSTRUCT_SPLITS = {"os": 146, "db": 421, "alfworld": 269, "webshop": 275, "kg": 251, "mind2web": 103}


def external_path(*parts: str) -> Path:
    """A path under ../shared/data/external. Skips the test when the folder is absent (a user's
    clone), but fails it under CI=true, where the data must be present."""
    if not EXTERNAL.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the shared data folder {EXTERNAL} is missing")
        pytest.skip(f"real data not available: {EXTERNAL} is absent (it sits beside the repository)")
    path = EXTERNAL.joinpath(*parts)
    if not path.exists() and "*" not in str(path):
        pytest.fail(f"expected real data file {path} is missing")
    return path


@pytest.fixture
def external():
    """Function returning paths under ../shared/data/external (skip/fail as described above)."""
    return external_path


def pytest_configure(config):
    """The tests (and the processes they start) keep agentmill's derived-data cache in a folder
    of their own, removed at the end, unless the environment names one."""
    if CACHE_DIR_VARIABLE not in os.environ:
        config.agentmill_cache = os.environ[CACHE_DIR_VARIABLE] = tempfile.mkdtemp(prefix="agentmill-test-cache-")


def pytest_unconfigure(config):
    folder = getattr(config, "agentmill_cache", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(CACHE_DIR_VARIABLE, None)
