"""Loads started in the background before a run (transforms.background): once per name, waited
for before the workers are forked, failures left to the worker's own call; the language model
they load is py3langid's own; a run starts them only when its workers are this process or its
forks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines import build, forked_workers
from pipelines.forked_workers import ForkedWorkersRunner
from pipelines.graph import load_plan
from tests.conftest import REPO
from tests.helpers import MULTI_PROCESS
from transforms import background
from transforms.quality import language


def test_a_named_load_starts_once_and_wait_returns_when_it_is_over():
    calls = []
    release = threading.Event()

    def loader():
        release.wait(5)
        calls.append(1)

    background.start("test-once", loader)
    background.start("test-once", loader)
    assert calls == []
    release.set()
    background.wait()
    assert calls == [1]


def test_a_failed_load_is_left_to_the_callers_own_call():
    def broken():
        raise RuntimeError("no model here")

    background.start("test-broken", broken)
    background.wait()  # the failure is not raised here
    with pytest.raises(RuntimeError, match="no model here"):
        broken()


@pytest.mark.parametrize("cache", ["fresh", "cached", "off"])
def test_the_language_model_is_py3langids_own(tmp_path, monkeypatch, cache):
    """The same model whether decompressed now (and cached), read back from the cache, or with
    the cache off."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from transforms.derived_cache import CACHE_DIR_VARIABLE

    monkeypatch.setenv(CACHE_DIR_VARIABLE, "" if cache == "off" else str(tmp_path))
    if cache == "cached":
        language._load_identifier()
        assert len(list(tmp_path.iterdir())) == 1
    theirs = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ours = language._load_identifier()
    assert np.array_equal(ours.nb_ptc, theirs.nb_ptc) and np.array_equal(ours.nb_pc, theirs.nb_pc)
    assert ours.nb_classes == theirs.nb_classes and ours.tk_output == theirs.tk_output
    assert ours.tk_nextmove == theirs.tk_nextmove and ours.tk_row == theirs.tk_row
    texts = ["Where is the nearest train station, please?", "Quelle heure est-il à Paris maintenant ?"]
    assert [ours.classify(t) for t in texts] == [theirs.classify(t) for t in texts]
    assert len(list(tmp_path.iterdir())) == (0 if cache == "off" else 1)


def test_npz_arrays_are_numpys_own_read_in_place():
    import io

    arrays = {
        "ptc": np.arange(12, dtype=np.float16).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        "classes": np.array(["en", "fra", "zh"]),
        "empty": np.zeros((0, 2), dtype=np.uint32),
        "scalar": np.array(7, dtype=np.uint64),
    }
    stored, compressed, objects = io.BytesIO(), io.BytesIO(), io.BytesIO()
    np.savez(stored, **arrays)
    np.savez_compressed(compressed, **arrays)
    np.savez(objects, tokens=np.array([{"a": 1}], dtype=object))
    read = language._npz_arrays(stored.getvalue())
    with np.load(io.BytesIO(stored.getvalue())) as loaded:
        assert sorted(read) == sorted(loaded.files)
        for name in loaded.files:
            assert read[name].dtype == loaded[name].dtype and np.array_equal(read[name], loaded[name])
            assert read[name].shape == loaded[name].shape and not read[name].flags.writeable
    assert read["fortran"].flags.f_contiguous
    with pytest.raises(ValueError, match="compressed member"):
        language._npz_arrays(compressed.getvalue())
    with pytest.raises(ValueError, match="array of objects"):
        language._npz_arrays(objects.getvalue())


def test_the_language_model_is_loaded_once_however_many_threads_ask(monkeypatch):
    loads = []

    def slow_load():
        loads.append(1)
        time.sleep(0.2)
        return object()

    monkeypatch.setattr(language, "_loaded", [])
    monkeypatch.setattr(language, "_load_identifier", slow_load)
    got = []
    threads = [threading.Thread(target=lambda: got.append(language._identifier())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len({id(g) for g in got}) == 1


def test_the_demo_prefetches_the_language_model_for_negatives_and_the_audit(monkeypatch):
    asked = []
    monkeypatch.setattr(language, "prefetch", lambda: asked.append(1))
    build.prefetch(load_plan(REPO / "pipelines" / "demo.yaml"))
    assert len(asked) == 2  # the negatives step and the audit's language_mismatch check


def test_loads_start_only_where_the_workers_are_this_process_or_its_forks(monkeypatch):
    monkeypatch.setattr(forked_workers, "_grpc_started", False)
    in_memory = PipelineOptions([])
    multi = PipelineOptions(MULTI_PROCESS)
    assert forked_workers.workers_here(FnApiRunner(), in_memory)
    assert forked_workers.workers_here(ForkedWorkersRunner(), in_memory)
    assert forked_workers.workers_here(ForkedWorkersRunner(), multi)
    assert not forked_workers.workers_here(FnApiRunner(), multi)  # Beam's own workers start cold
    assert not forked_workers.workers_here("DataflowRunner", in_memory)
    monkeypatch.setattr(forked_workers, "_grpc_started", True)
    assert not forked_workers.workers_here(ForkedWorkersRunner(), multi)


def test_the_workers_are_forked_only_once_the_loads_are_over():
    """In a fresh process (a fork after gRPC ran may hang): a slow load started before the
    zygote is forked has ended when the run begins."""
    code = (
        "import threading, time\n"
        "from apache_beam.options.pipeline_options import PipelineOptions\n"
        "from pipelines import forked_workers\n"
        "from transforms import background\n"
        "done = threading.Event()\n"
        "background.start('slow', lambda: (time.sleep(0.5), done.set()))\n"
        "options = PipelineOptions(['--direct_running_mode=multi_processing', '--direct_num_workers=2'])\n"
        "with forked_workers.forked_workers(forked_workers.ForkedWorkersRunner(), options):\n"
        "    assert done.is_set()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
