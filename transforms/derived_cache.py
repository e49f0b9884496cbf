"""A per-user cache of data derived from an installed file, so a run does not derive it again.

The language model (``transforms/quality/language.py``) ships as a 4.5 MB LZMA file that takes
0.4 s of CPU to decompress in every process that needs it (68 MB); kept here, compressed with
zstd (7 MB), it takes 0.06 s. What is cached is only ever a pure function of the source file's
bytes, so a cached copy and a fresh derivation are the same bytes.

Guarantees:

- an entry is named after what it derives from: ``<name>-<xxh3-128 of the source bytes>``, so a
  new version of the source (a package upgrade) is a new entry and an old one is never used;
- an entry records the size and xxh3-128 of the derived bytes, checked on every read: a
  truncated, damaged or foreign file is derived again and replaced, never used;
- entries are written to a temporary file in the cache folder and renamed into place, so a
  reader (another process) sees a whole entry or none;
- the cache is an optimisation only: a folder that cannot be created, read or written gives the
  freshly derived bytes, as without a cache. ``AGENTMILL_CACHE_DIR`` chooses the folder (default
  ``$XDG_CACHE_HOME/agentmill``, else ``~/.cache/agentmill``); set it to an empty string (or
  ``0``, ``off``) to use no cache. agentmill never deletes anything in it but its own entries
  that it replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import xxhash

#: Environment variable: the cache folder; empty, ``0`` or ``off`` turn the cache off.
CACHE_DIR_VARIABLE = "AGENTMILL_CACHE_DIR"
_MAGIC = b"agentmill-derived-cache 1\n"
_CODEC = "zstd"


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when the cache is off."""
    chosen = os.environ.get(CACHE_DIR_VARIABLE)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "0", "off") else Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "agentmill"


def _digest(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def derived(name: str, source: Path, derive: Callable[[bytes], bytes]) -> bytes:
    """``derive(source's bytes)``, from the cache when an entry for exactly these source bytes
    is there and whole, else derived now and stored (best effort)."""
    data = source.read_bytes()
    folder = cache_dir()
    if folder is None:
        return derive(data)
    entry = folder / f"{name}-{_digest(data)}"
    found = _read(entry)
    if found is not None:
        return found
    result = derive(data)
    with contextlib.suppress(OSError):
        _write(entry, result)
    return result


def _read(entry: Path) -> bytes | None:
    """The derived bytes of ``entry``, or ``None`` when it is missing, unreadable or not whole."""
    import pyarrow as pa

    try:
        raw = entry.read_bytes()
    except OSError:
        return None
    if not raw.startswith(_MAGIC):
        return None
    header_end = raw.find(b"\n", len(_MAGIC))
    try:
        header = json.loads(raw[len(_MAGIC) : header_end])
        size, digest = int(header["size"]), str(header["xxh3_128"])
        payload = pa.decompress(memoryview(raw)[header_end + 1 :], size, codec=_CODEC, asbytes=True)
    except (ValueError, KeyError, TypeError, OSError, pa.ArrowException):
        return None
    if len(payload) != size or _digest(payload) != digest:
        return None
    return payload


def _write(entry: Path, payload: bytes) -> None:
    """Store ``payload`` as ``entry``: written beside it, then renamed into place."""
    import pyarrow as pa

    entry.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"size": len(payload), "xxh3_128": _digest(payload), "codec": _CODEC}).encode("ascii")
    compressed = pa.compress(payload, codec=_CODEC, asbytes=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{entry.name}.", dir=entry.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(_MAGIC + header + b"\n")
            out.write(compressed)
        os.replace(temporary, entry)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


__all__ = ["CACHE_DIR_VARIABLE", "cache_dir", "derived"]
