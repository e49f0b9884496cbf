"""The per-user cache of derived data: same bytes as deriving, never a damaged or stale entry."""

from __future__ import annotations

import lzma

import pytest

from transforms import derived_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(derived_cache.CACHE_DIR_VARIABLE, str(folder))
    return folder


def _counting(calls):
    def derive(data: bytes) -> bytes:
        calls.append(len(data))
        return lzma.decompress(data)

    return derive


def _source(tmp_path, text: bytes, name: str = "model.xz"):
    path = tmp_path / name
    path.write_bytes(lzma.compress(text))
    return path


def test_an_entry_is_derived_once_and_read_back_as_the_same_bytes(tmp_path, cache):
    calls = []
    source = _source(tmp_path, b"weights " * 10_000)
    first = derived_cache.derived("model", source, _counting(calls))
    second = derived_cache.derived("model", source, _counting(calls))
    assert first == second == b"weights " * 10_000 and len(calls) == 1
    (entry,) = cache.iterdir()
    assert entry.name.startswith("model-") and entry.stat().st_size < len(first) / 10


def test_new_source_bytes_are_a_new_entry(tmp_path, cache):
    calls = []
    old = derived_cache.derived("model", _source(tmp_path, b"version one"), _counting(calls))
    new = derived_cache.derived("model", _source(tmp_path, b"version two"), _counting(calls))
    assert (old, new) == (b"version one", b"version two") and len(calls) == 2 and len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "header"])
def test_a_damaged_entry_is_derived_again_and_replaced(tmp_path, cache, damage):
    calls = []
    source = _source(tmp_path, bytes(range(256)) * 400)
    expected = derived_cache.derived("model", source, _counting(calls))
    (entry,) = cache.iterdir()
    raw = entry.read_bytes()
    damaged = {
        "truncate": raw[: len(raw) // 2],
        "flip": raw[:-10] + bytes([raw[-10] ^ 0xFF]) + raw[-9:],
        "foreign": b"not an entry at all",
        "header": raw.replace(b'"size": ', b'"size": 1', 1),
    }[damage]
    entry.write_bytes(damaged)
    assert derived_cache.derived("model", source, _counting(calls)) == expected and len(calls) == 2
    assert entry.read_bytes() == raw  # replaced by a whole entry
    assert derived_cache.derived("model", source, _counting(calls)) == expected and len(calls) == 2


@pytest.mark.parametrize("setting", ["", "0", "off"])
def test_the_cache_can_be_turned_off(tmp_path, monkeypatch, setting):
    monkeypatch.setenv(derived_cache.CACHE_DIR_VARIABLE, setting)
    calls = []
    source = _source(tmp_path, b"abc")
    assert derived_cache.cache_dir() is None
    assert [derived_cache.derived("m", source, _counting(calls)) for _ in range(2)] == [b"abc", b"abc"]
    assert len(calls) == 2


def test_an_unwritable_cache_gives_the_derived_bytes(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(derived_cache.CACHE_DIR_VARIABLE, str(blocker / "cache"))
    calls = []
    assert derived_cache.derived("m", _source(tmp_path, b"abc"), _counting(calls)) == b"abc" and calls


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(derived_cache.CACHE_DIR_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert derived_cache.cache_dir() == tmp_path / "agentmill"
