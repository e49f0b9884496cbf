"""File operations of a run's output on any Beam filesystem (local, gs://, s3://, hdfs://).

Single files go through Beam's ``FileSystems`` (join, open, exists and delete directly). What
needs more than that is here: reading and writing text, and directories, which keep POSIX
semantics locally, while object stores have none, so there a "directory" is every file under
a prefix and listing, deleting and moving work file by file.
"""

from __future__ import annotations

import os
import shutil

from apache_beam.io.filesystems import FileSystems


def is_remote(path: str) -> bool:
    """Whether ``path`` names a non-local filesystem (it has a ``scheme://``)."""
    return "://" in path


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain", compression_type="uncompressed") as handle:
        handle.write(text.encode("utf-8"))


def files_under(directory: str) -> list[str]:
    """Every file below ``directory`` (recursively), sorted."""
    if not is_remote(directory):
        return sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names)
    prefix = directory.rstrip("/") + "/"
    matched = FileSystems.match([prefix + "**"])[0].metadata_list
    return sorted(m.path for m in matched)


def remove_tree(directory: str) -> None:
    """Delete ``directory`` and everything below it; nothing if it does not exist."""
    if not is_remote(directory):
        shutil.rmtree(directory, ignore_errors=True)
        return
    paths = files_under(directory)
    if paths:
        FileSystems.delete(paths)


def move_tree(source: str, target: str, last: str | None = None) -> None:
    """Move every file under ``source`` to the same place under ``target`` (remote paths); the
    file named ``last`` (relative) moves last, so its presence marks a complete move."""
    prefix = source.rstrip("/") + "/"
    paths = files_under(source)
    first = [p for p in paths if p[len(prefix) :] != last]
    final = [p for p in paths if p[len(prefix) :] == last]
    for batch in (first, final):  # two calls: a batch may finish in any order
        if batch:
            FileSystems.rename(batch, [FileSystems.join(target, p[len(prefix) :]) for p in batch])
