"""``agentmill verify`` and ``inspect``'s check: an output directory against its manifest.

The checks themselves are :mod:`schemas.integrity` (shared with ``train/``, which reads schemas
and shards only); this module opens local and remote (``gs://``...) outputs alike and turns an
unreadable output into an :class:`~pipelines.errors.OutputError`.
"""

from __future__ import annotations

from typing import IO

from pipelines import storage
from pipelines.errors import OutputError
from schemas.integrity import IntegrityError, Verification, verify_output


def _remote_open(path: str) -> IO[bytes]:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        raise FileNotFoundError(path)
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def verify(directory: str, hashes: bool = True) -> Verification:
    """Every shard of ``directory`` checked against its manifest (rows, bytes and, with
    ``hashes``, sha256) and ``state.json`` against the manifest's shard list. An output with no
    readable manifest raises :class:`OutputError`; mismatches are in the result, not raised."""
    try:
        if storage.is_remote(directory):
            return verify_output(directory, hashes, opener=_remote_open)
        return verify_output(directory, hashes)
    except IntegrityError as exc:
        raise OutputError(str(exc)) from None
