"""Input files: glob resolution, fingerprints, and record iteration with locations.

All file access goes through Beam's ``FileSystems``, so local paths, ``gs://``, ``s3://`` and
``hdfs://`` work alike, and ``.gz`` files are decompressed on the fly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.base import Failed

SUPPORTED_EXTENSIONS = (".parquet", ".jsonl", ".json")


class InputError(ValueError):
    """A problem with the declared inputs found before the run starts (e.g. no file matched)."""


def base_extension(path: str) -> str:
    """The data extension of ``path``, ignoring a trailing ``.gz``: ``a.jsonl.gz`` -> ``.jsonl``."""
    name = posixpath.basename(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return posixpath.splitext(name)[1]


def _absolute(pattern: str, base_dir: str) -> str:
    if "://" in pattern or posixpath.isabs(pattern):
        return pattern
    return posixpath.normpath(posixpath.join(base_dir, pattern))


def resolve_paths(patterns: list[str], base_dir: str) -> list[str]:
    """Sorted, de-duplicated files matching ``patterns`` (relative ones start at ``base_dir``).

    Raises :class:`InputError` for a pattern that matches nothing or a file of an unsupported type.
    """
    files: set[str] = set()
    for pattern in patterns:
        absolute = _absolute(pattern, base_dir)
        try:
            (result,) = FileSystems.match([absolute])
            matched = [m.path for m in result.metadata_list]
        except Exception as exc:  # Beam raises BeamIOError for unreachable schemes
            raise InputError(f"cannot list {pattern!r}: {exc}") from None
        if not matched:
            raise InputError(f"path {pattern!r} matched no files (looked for {absolute!r})")
        for path in matched:
            if base_extension(path) not in SUPPORTED_EXTENSIONS:
                raise InputError(
                    f"{path!r} has an unsupported extension; expected one of "
                    f"{', '.join(SUPPORTED_EXTENSIONS)} (optionally .gz)"
                )
            files.add(path)
    return sorted(files)


@dataclass(frozen=True)
class Fingerprint:
    path: str
    bytes: int
    sha256: str


def fingerprint(path: str) -> Fingerprint:
    """Size and sha256 of the raw bytes of ``path``."""
    digest = hashlib.sha256()
    size = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return Fingerprint(path, size, digest.hexdigest())


@dataclass(frozen=True)
class RawRecord:
    """One decoded record: the JSON object, where it came from, and its index in the file."""

    obj: Any
    location: str
    index: int


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


def _iter_jsonl_lines(name: str, lines: Iterator[bytes], max_bytes: int) -> Iterator[RawRecord | Failed]:
    for number, raw in enumerate(lines, start=1):
        location = f"{name}:line {number}"
        if len(raw) > max_bytes:
            yield Failed(
                "record_too_large",
                f"line has {len(raw)} bytes, limit {max_bytes}",
                location,
                raw[:2000].decode("utf-8", "replace"),
            )
            continue
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Failed("invalid_utf8", str(exc), location, raw.decode("utf-8", "replace"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Failed("invalid_json", str(exc), location, text)
            continue
        except RecursionError:
            yield Failed(
                "too_deeply_nested", "JSON nested deeper than the parser's recursion limit", location, text[:2000]
            )
            continue
        yield RawRecord(obj, location, number - 1)


def common_folder(paths: list[str]) -> str:
    """The deepest folder that holds every path (to name files relative to it)."""
    folders = [posixpath.dirname(p) for p in paths]
    if not folders:
        return ""
    if any("://" in f for f in folders):
        prefix = posixpath.commonprefix(folders)
        return prefix[: prefix.rfind("/")] if "/" in prefix else ""
    return posixpath.commonpath(folders)


def label_of(path: str, base: str) -> str:
    """``path`` relative to ``base`` (the file's name in locations and source ids)."""
    if base and path.startswith(base.rstrip("/") + "/"):
        return path[len(base.rstrip("/")) + 1 :]
    return posixpath.basename(path)


def iter_records(path: str, max_record_bytes: int, label: str | None = None) -> Iterator[RawRecord | Failed]:
    """Every record of one file, or a :class:`Failed` for what cannot be decoded.

    ``.parquet`` yields one record per row; ``.jsonl`` one per non-blank line; ``.json`` the
    elements of a top-level array, a single top-level object, or (for JSON Lines saved as
    ``.json``) one per line. An empty or unreadable file yields one :class:`Failed`.
    Locations name the file by ``label`` (default: its base name).
    """
    name = label or posixpath.basename(path)
    ext = base_extension(path)
    if ext == ".parquet":
        yield from _iter_parquet(path, name)
        return
    if ext == ".jsonl":
        yield from _iter_jsonl_file(path, name, max_record_bytes)
        return
    try:
        with _open(path) as handle:
            data = handle.read()
    except Exception as exc:
        yield Failed("unreadable_file", f"{type(exc).__name__}: {exc}", name)
        return
    if not data.strip():
        yield Failed("empty_file", "the file has no records", name)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Failed("invalid_utf8", str(exc), name, data[:2000].decode("utf-8", "replace"))
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines under a .json name (e.g. BFCL)
            yield from _iter_jsonl_lines(name, iter(data.splitlines()), max_record_bytes)
        else:
            yield Failed("invalid_json", str(exc), name, text[:2000])
        return
    except RecursionError:
        yield Failed("too_deeply_nested", "JSON nested deeper than the parser's recursion limit", name, text[:2000])
        return
    if isinstance(obj, list):
        for index, item in enumerate(obj):
            yield RawRecord(item, f"{name}:item {index}", index)
    else:
        yield RawRecord(obj, name, 0)


def _iter_jsonl_file(path: str, name: str, max_bytes: int) -> Iterator[RawRecord | Failed]:
    """The lines of a JSON Lines file, streamed (split like ``bytes.splitlines``)."""
    seen = [False]

    def lines(handle: Any) -> Iterator[bytes]:
        for chunk in iter(handle.readline, b""):
            for line in chunk.splitlines():
                seen[0] = seen[0] or bool(line.strip())
                yield line

    try:
        with _open(path) as handle:
            yield from _iter_jsonl_lines(name, lines(handle), max_bytes)
    except Exception as exc:
        yield Failed("unreadable_file", f"{type(exc).__name__}: {exc}", name)
        return
    if not seen[0]:
        yield Failed("empty_file", "the file has no records", name)


def _iter_parquet(path: str, name: str) -> Iterator[RawRecord | Failed]:
    """The rows of a parquet file, read a batch at a time (a compressed file is read whole)."""
    import pyarrow.parquet as pq

    try:
        with contextlib.ExitStack() as stack:
            if CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED:
                raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
                source: Any = stack.enter_context(raw)
            else:
                with _open(path) as handle:
                    source = io.BytesIO(handle.read())
            parquet = stack.enter_context(pq.ParquetFile(source))
            index = 0
            for batch in parquet.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield RawRecord(row, f"{name}:row {index}", index)
                    index += 1
    except Exception as exc:
        yield Failed("unreadable_file", f"{type(exc).__name__}: {exc}", name)
