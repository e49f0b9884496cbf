"""A remote-looking Beam filesystem for tests: ``fakeremote://a/b`` is ``<root>/a/b`` on disk.

Like an object store it has no directories (``has_dirs`` is false, listing is by prefix), so
code that works on it does not rely on local directory semantics. Defining the class registers
the scheme with Beam's ``FileSystems`` in this process (the in-process runner only).
"""

from __future__ import annotations

import atexit
import os
import posixpath
import shutil
import tempfile

from apache_beam.io.filesystem import BeamIOError, FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "fakeremote"
PREFIX = f"{SCHEME}://"
ROOT = tempfile.mkdtemp(prefix="agentmill-fakeremote-")
_CREATOR = os.getpid()


@atexit.register
def _remove_root() -> None:
    """The test session's fake bucket goes when the process that made it exits (a forked
    child that inherits this hook leaves it alone)."""
    if os.getpid() == _CREATOR:
        shutil.rmtree(ROOT, ignore_errors=True)


def local_path(path: str) -> str:
    assert path.startswith(PREFIX), path
    return os.path.join(ROOT, path[len(PREFIX) :])


def _prune(directory: str) -> None:
    """Remove empty folders up to the root: an object store has no empty directories."""
    while directory.startswith(ROOT + "/") and not os.listdir(directory):
        os.rmdir(directory)
        directory = os.path.dirname(directory)


class FakeRemoteFileSystem(LocalFileSystem):
    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def _remote(self, local: str) -> str:
        return PREFIX + os.path.relpath(local, ROOT)

    def join(self, basepath: str, *paths: str) -> str:
        return posixpath.join(basepath, *paths)

    def split(self, path: str) -> tuple[str, str]:
        head, tail = posixpath.split(path.rstrip("/"))
        return head, tail

    def has_dirs(self) -> bool:
        return False

    def mkdirs(self, path: str) -> None:
        os.makedirs(local_path(path), exist_ok=True)

    def _list(self, dir_or_prefix: str):
        """Every file whose path starts with ``dir_or_prefix`` (object-store listing)."""
        local = local_path(dir_or_prefix)
        top = local if local.endswith("/") else os.path.dirname(local)
        for dirpath, _, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                if path.startswith(local):
                    yield FileMetadata(self._remote(path), os.path.getsize(path), os.path.getmtime(path))

    def create(self, path, *args, **kwargs):
        return super().create(local_path(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(local_path(path), *args, **kwargs)

    def copy(self, sources, destinations):
        return super().copy([local_path(p) for p in sources], [local_path(p) for p in destinations])

    def rename(self, sources, destinations):
        for source, destination in zip(sources, destinations, strict=True):
            os.makedirs(os.path.dirname(local_path(destination)), exist_ok=True)
            os.replace(local_path(source), local_path(destination))
            _prune(os.path.dirname(local_path(source)))

    def exists(self, path):
        return os.path.isfile(local_path(path))  # objects only: no directories

    def size(self, path):
        return super().size(local_path(path))

    def last_updated(self, path):
        return super().last_updated(local_path(path))

    def checksum(self, path):
        return super().checksum(local_path(path))

    def metadata(self, path):
        meta = super().metadata(local_path(path))
        return FileMetadata(path, meta.size_in_bytes, meta.last_updated_in_seconds)

    def delete(self, paths):
        missing = {p: FileNotFoundError(p) for p in paths if not os.path.isfile(local_path(p))}
        for path in paths:
            if path not in missing:
                os.remove(local_path(path))
                _prune(os.path.dirname(local_path(path)))
        if missing:
            raise BeamIOError("Delete operation failed", missing)
