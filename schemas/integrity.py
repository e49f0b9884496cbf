"""Shard integrity: an output directory checked against its ``manifest.json``.

The manifest records, per shard, the file name, its row count, its size in bytes and its sha256
(:class:`schemas.manifest.ShardInfo`), and the output's total row count. :func:`verify_output`
checks every one of them against the files on disk, plus that ``state.json`` (what
``datasets.load_from_disk`` reads) lists exactly the manifest's shards. A shard cut at a
record-batch boundary is still a valid Arrow stream that ``datasets`` loads without a word; here
it shows as a size, row-count and sha256 mismatch.

Guarantees: every shard is opened once and read to its end (rows counted from the Arrow stream
and the bytes hashed in the same pass); a missing, unreadable or mismatching file is reported
by name with what differs, never raised past the caller; with ``hashes=False`` the sha256 is not
computed (sizes and row counts still are), for a quick look.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
from pydantic import ValidationError

from schemas.manifest import Manifest, ShardInfo

MANIFEST = "manifest.json"
STATE = "state.json"
_CHUNK = 1 << 20

Opener = Callable[[str], IO[bytes]]


class IntegrityError(ValueError):
    """An output directory whose files do not match its manifest (or that has no readable one)."""


def _local_open(path: str) -> IO[bytes]:
    return open(path, "rb")


class _HashingReader:
    """A read-only file object that hashes and counts the bytes read through it."""

    def __init__(self, handle: IO[bytes], hashes: bool) -> None:
        self.handle = handle
        self.digest = hashlib.sha256() if hashes else None
        self.size = 0
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)
        if self.digest is not None:
            self.digest.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        self.closed = True

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


@dataclass(frozen=True)
class ShardCheck:
    """One shard: what the manifest says, what was found, and each difference in words."""

    expected: ShardInfo
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Verification:
    """The result of :func:`verify_output`; ``problems`` are the output-level ones."""

    directory: str
    manifest: Manifest
    shards: list[ShardCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    hashes: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.ok for s in self.shards)

    def failures(self) -> list[str]:
        """Every problem as ``'<shard>: <what>'`` (shards first, then the output's)."""
        lines = [f"{s.expected.filename}: {'; '.join(s.problems)}" for s in self.shards if not s.ok]
        return lines + self.problems

    def summary(self, limit: int = 3) -> str:
        """One line: the first ``limit`` failures and how many more."""
        failures = self.failures()
        text = "; ".join(failures[:limit])
        if len(failures) > limit:
            text += f"; and {len(failures) - limit} more"
        return text


def read_manifest(directory: str, opener: Opener = _local_open) -> Manifest:
    """The validated manifest of an output directory; :class:`IntegrityError` if it has none
    or it cannot be read."""
    path = _join(directory, MANIFEST)
    try:
        with opener(path) as handle:
            raw = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{directory!r} is not an agentmill output (no {MANIFEST})") from None
    except OSError as exc:
        raise IntegrityError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path!r} is not valid JSON: {exc}") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise IntegrityError(f"{path!r} is not an agentmill manifest: {exc.error_count()} invalid field(s)") from None


def _join(directory: str, name: str) -> str:
    """``directory/name`` for a local path or a URL (``gs://...``)."""
    return directory.rstrip("/") + "/" + name if "://" in directory else os.path.join(directory, name)


def _count_rows(source: Any) -> tuple[int | None, str | None]:
    """Rows of the Arrow IPC stream in ``source``, or ``None`` and why it cannot be read."""
    rows = 0
    try:
        with pa.ipc.open_stream(source) as stream:
            for batch in stream:
                rows += batch.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        return None, f"not a readable Arrow stream ({str(exc).splitlines()[0][:200]})"
    return rows, None


def _compare(expected: ShardInfo, rows: int | None, size: int, digest: str | None, problems: list[str]) -> ShardCheck:
    if size != expected.bytes:
        problems.append(f"{size:,} bytes, manifest says {expected.bytes:,}")
    if rows is not None and rows != expected.rows:
        problems.append(f"{rows:,} rows, manifest says {expected.rows:,}")
    if digest is not None and digest != expected.sha256:
        problems.append(f"sha256 {digest[:12]}..., manifest says {expected.sha256[:12]}...")
    return ShardCheck(expected, rows, size, digest, tuple(problems))


def check_shard(path: str, expected: ShardInfo, hashes: bool = True, opener: Opener = _local_open) -> ShardCheck:
    """Compare one shard's rows, size and (with ``hashes``) sha256 with ``expected``. The shard
    is read to its end once; a local shard without ``hashes`` is memory-mapped, so only its
    batch headers are read."""
    if not hashes and opener is _local_open:
        try:
            size = os.path.getsize(path)
            with pa.memory_map(path) as source:
                rows, problem = _count_rows(source)
        except FileNotFoundError:
            return ShardCheck(expected, problems=("missing",))
        except OSError as exc:
            return ShardCheck(expected, problems=(f"cannot open: {exc.strerror or exc}",))
        return _compare(expected, rows, size, None, [problem] if problem else [])
    try:
        handle = opener(path)
    except FileNotFoundError:
        return ShardCheck(expected, problems=("missing",))
    except OSError as exc:
        return ShardCheck(expected, problems=(f"cannot open: {exc.strerror or exc}",))
    with handle:
        reader = _HashingReader(handle, hashes)
        rows, problem = _count_rows(reader)
        problems = [problem] if problem else []
        try:
            reader.drain()
        except OSError as exc:
            return ShardCheck(expected, problems=(*problems, f"cannot read: {exc.strerror or exc}"))
    digest = reader.digest.hexdigest() if reader.digest is not None else None
    return _compare(expected, rows, reader.size, digest, problems)


def _state_files(directory: str, opener: Opener) -> list[str] | str:
    """The shard names ``state.json`` lists, or why they cannot be known."""
    path = _join(directory, STATE)
    try:
        with opener(path) as handle:
            state: Any = json.loads(handle.read().decode("utf-8"))
        return [entry["filename"] for entry in state["_data_files"]]
    except FileNotFoundError:
        return f"{STATE} is missing (datasets.load_from_disk needs it)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{STATE} cannot be read: {exc}"


def verify_output(directory: str, hashes: bool = True, opener: Opener = _local_open) -> Verification:
    """Check every shard of the output at ``directory`` against its manifest (see the module
    docstring). Raises :class:`IntegrityError` only when there is no readable manifest."""
    manifest = read_manifest(directory, opener)
    result = Verification(directory, manifest, hashes=hashes)
    for info in manifest.output.shards:
        result.shards.append(check_shard(_join(directory, info.filename), info, hashes, opener))
    listed = sum(s.rows for s in manifest.output.shards)
    if listed != manifest.output.num_rows:
        result.problems.append(
            f"the manifest's shards hold {listed:,} rows but its num_rows is {manifest.output.num_rows:,}"
        )
    names = [s.filename for s in manifest.output.shards]
    state_files = _state_files(directory, opener)
    if isinstance(state_files, str):
        result.problems.append(state_files)
    elif sorted(state_files) != sorted(names):
        result.problems.append(f"{STATE} lists {state_files} but the manifest lists {names}")
    return result


def require_intact(directory: str, hashes: bool = True) -> Verification:
    """:func:`verify_output`, raising :class:`IntegrityError` with every problem named when the
    output does not match its manifest."""
    result = verify_output(directory, hashes)
    if not result.ok:
        raise IntegrityError(
            f"{directory!r} does not match its manifest: {result.summary()} "
            "(the output is damaged or incomplete; rerun the pipeline or restore it)"
        )
    return result
