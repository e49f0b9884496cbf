"""Input files: glob resolution, fingerprints, and record iteration with locations.

All file access goes through Beam's ``FileSystems``, so local paths, ``gs://``, ``s3://`` and
``hdfs://`` work alike, and ``.gz`` files are decompressed on the fly. Local patterns are matched
without importing Beam (the same syntax and results as Beam's local file system, tested against
it), so resolving a spec's inputs (``agentmill validate``) does not pay for Beam's import.

Input integrity: a ``.gz`` stream is checked to its end (end-of-stream marker and CRC of every
member), so a truncated or corrupt file is never read as complete: the records read before the
damage are kept and the file adds one dead letter (``truncated_input`` / ``corrupt_input``) that
says how many were read. A damaged parquet row group costs only its rows (``corrupt_row_group``).
JSON is decoded strictly: ``NaN``, ``Infinity`` and numbers that overflow a float (``1e400``)
are a dead letter ``non_finite_number`` (they cannot be written as JSON again); a UTF-8 byte
order mark at the start of a file is skipped.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import posixpath
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transforms.base import Failed

if TYPE_CHECKING:
    from schemas import EvalSetSpec

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


def _pattern_regex(pattern: str) -> str:
    """Beam's file pattern syntax as a regex: fnmatch's, except that ``*`` stays within a path
    segment and ``**`` crosses segments. The same translation as Beam's
    ``FileSystem.translate_pattern`` (which Beam based on Python 2.7's ``fnmatch.translate``,
    under the Python Software Foundation License), so a local pattern matches here what it
    matches in Beam (``tests/test_beam_free_validation.py`` compares the two)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                out.append(".*")
                i += 1
            else:
                out.append(r"[^/\\]*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(r"\[")
            else:
                stuff = pattern[i:j].replace("\\", "\\\\")
                i = j + 1
                if stuff[0] == "!":
                    stuff = "^" + stuff[1:]
                elif stuff[0] == "^":
                    stuff = "\\" + stuff
                out.append(f"[{stuff}]")
        else:
            out.append(re.escape(c))
    return r"(?ms)" + "".join(out) + r"\Z"


def match_local(pattern: str) -> list[str]:
    """The local files matching ``pattern``, as Beam's ``FileSystems.match`` finds them (a
    pattern without wildcards: the path, if it exists; else every file under the folder of the
    part before the first wildcard, walked recursively, whose path matches), without Beam."""
    if pattern.endswith(("/", "\\")):
        pattern += "*"
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:
        return [pattern] if os.path.exists(pattern) else []
    root = os.path.dirname(prefix)
    if not os.path.exists(root):
        return []
    match = re.compile(_pattern_regex(pattern)).match
    return [path for folder, _, names in os.walk(root) for name in names if match(path := os.path.join(folder, name))]


def _match(pattern: str) -> list[str]:
    if "://" not in pattern:
        return match_local(pattern)
    from apache_beam.io.filesystems import FileSystems

    (result,) = FileSystems.match([pattern])
    return [m.path for m in result.metadata_list]


def resolve_paths(patterns: list[str], base_dir: str) -> list[str]:
    """Sorted, de-duplicated files matching ``patterns`` (relative ones start at ``base_dir``).

    Raises :class:`InputError` for a pattern that matches nothing or a file of an unsupported type.
    """
    files: set[str] = set()
    for pattern in patterns:
        absolute = _absolute(pattern, base_dir)
        try:
            matched = _match(absolute)
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


def eval_files(eval_sets: list[EvalSetSpec], base_dir: str) -> list[str]:
    """Every file of ``eval_sets``, resolved against ``base_dir``."""
    return sorted({path for s in eval_sets for path in resolve_paths(s.paths, base_dir)})


@dataclass(frozen=True)
class Fingerprint:
    path: str
    bytes: int
    sha256: str


def fingerprint(path: str) -> Fingerprint:
    """Size and sha256 of the raw bytes of ``path``."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

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
    #: Whether a string of ``obj`` may hold a lone surrogate (its JSON text has a ``\\udXXX``
    #: surrogate escape); parquet strings are UTF-8, so never.
    surrogates: bool = True


#: Dead-letter reasons that mean a whole input file (or part of it) could not be read as written:
#: the run summary names them apart from record-level dead letters.
INPUT_INTEGRITY_REASONS = ("truncated_input", "corrupt_input", "corrupt_row_group")
BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class NonFiniteNumber(ValueError):
    """A JSON number that has no JSON form once parsed (``NaN``, ``Infinity``, ``1e400``)."""


def _no_constant(name: str) -> float:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NonFiniteNumber(f"{text} does not fit a 64-bit float")
    return value


_STRICT = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def loads(text: str) -> Any:
    """``json.loads`` that refuses non-finite numbers (raises :class:`NonFiniteNumber`)."""
    return _STRICT.decode(text)


def _integrity_failure(exc: BaseException) -> str | None:
    """``truncated_input`` / ``corrupt_input`` for an error of a damaged compressed stream."""
    if isinstance(exc, EOFError):
        return "truncated_input"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return "corrupt_input"
    return None


def _open(path: str):
    """``path`` for reading, decompressed; ``.gz`` through :mod:`gzip`, which checks the
    end-of-stream marker and each member's CRC and length (raising ``EOFError`` /
    ``BadGzipFile``), where Beam's reader stops quietly at a truncated end."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if CompressionTypes.detect_compression_type(path) == CompressionTypes.GZIP:
        raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        return _ClosingGzip(raw)
    return FileSystems.open(path, compression_type=CompressionTypes.AUTO)


class _ClosingGzip(gzip.GzipFile):
    """A ``GzipFile`` that also closes the raw handle it reads from."""

    def __init__(self, raw: Any) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


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
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]  # a UTF-8 byte order mark
        try:
            obj = loads(text)
        except json.JSONDecodeError as exc:
            yield Failed("invalid_json", str(exc), location, text)
            continue
        except NonFiniteNumber as exc:
            yield Failed("non_finite_number", str(exc), location, text)
            continue
        except RecursionError:
            yield Failed(
                "too_deeply_nested", "JSON nested deeper than the parser's recursion limit", location, text[:2000]
            )
            continue
        yield RawRecord(obj, location, number - 1, _SURROGATE_ESCAPE.search(text) is not None)


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
        reason = _integrity_failure(exc) or "unreadable_file"
        yield Failed(reason, f"{type(exc).__name__}: {exc}; 0 records were read", name)
        return
    data = data.removeprefix(BOM)
    if not data.strip():
        yield Failed("empty_file", "the file has no records", name)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Failed("invalid_utf8", str(exc), name, data[:2000].decode("utf-8", "replace"))
        return
    strict = True
    try:
        try:
            obj = loads(text)
        except NonFiniteNumber:  # find the items that hold one; the others are read
            strict = False
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
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    items = enumerate(obj) if isinstance(obj, list) else [(0, obj)]
    for index, item in items:
        location = f"{name}:item {index}" if isinstance(obj, list) else name
        where = None if strict else non_finite_path(item)
        if where is not None:
            yield Failed("non_finite_number", f"{where} is not a finite number", location, _clip_json(item))
        else:
            yield RawRecord(item, location, index, surrogates)


def non_finite_path(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first NaN or infinite float in ``value``, or ``None``."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := non_finite_path(item, f"{path}.{key}")) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := non_finite_path(item, f"{path}[{index}]")) is not None:
                return found
    return None


def _clip_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)[:2000]


def _iter_jsonl_file(path: str, name: str, max_bytes: int) -> Iterator[RawRecord | Failed]:
    """The lines of a JSON Lines file, streamed (split like ``bytes.splitlines``)."""
    seen = [False]

    def lines(handle: Any) -> Iterator[bytes]:
        for chunk in iter(handle.readline, b""):
            for line in chunk.splitlines():
                seen[0] = seen[0] or bool(line.strip())
                yield line

    read = 0
    try:
        with _open(path) as handle:
            for outcome in _iter_jsonl_lines(name, lines(handle), max_bytes):
                read += 1
                yield outcome
    except Exception as exc:
        reason = _integrity_failure(exc)
        if reason is None:
            yield Failed("unreadable_file", f"{type(exc).__name__}: {exc}", name)
        else:
            yield Failed(reason, f"{type(exc).__name__}: {exc}; {_records(read)} read before it", name)
        return
    if not seen[0]:
        yield Failed("empty_file", "the file has no records", name)


def _records(n: int) -> str:
    return "1 record was" if n == 1 else f"{n} records were"


def _iter_parquet(path: str, name: str) -> Iterator[RawRecord | Failed]:
    """The rows of a parquet file, read a batch at a time (a compressed file is read whole).

    Row groups are read one by one: a row group that cannot be decoded is one dead letter
    (``corrupt_row_group``, located ``file:row group N``) with the number of its rows lost, and
    the other row groups are read; row indices stay those of the file."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        with contextlib.ExitStack() as stack:
            if CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED:
                raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
                source: Any = stack.enter_context(raw)
            else:
                try:
                    with _open(path) as handle:
                        source = io.BytesIO(handle.read())
                except Exception as exc:
                    if (reason := _integrity_failure(exc)) is None:
                        raise
                    yield Failed(reason, f"{type(exc).__name__}: {exc}; 0 records were read", name)
                    return
            parquet = stack.enter_context(pq.ParquetFile(source))
            start = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                done = 0
                try:
                    for batch in parquet.iter_batches(batch_size=256, row_groups=[group]):
                        for row in batch.to_pylist():
                            yield RawRecord(row, f"{name}:row {start + done}", start + done, False)
                            done += 1
                except Exception as exc:
                    yield Failed(
                        "corrupt_row_group",
                        f"{type(exc).__name__}: {exc}; {rows - done} of the row group's {rows} rows "
                        f"(rows {start + done}-{start + rows - 1}) were lost",
                        f"{name}:row group {group}",
                    )
                start += rows
    except Exception as exc:
        yield Failed("unreadable_file", f"{type(exc).__name__}: {exc}", name)
