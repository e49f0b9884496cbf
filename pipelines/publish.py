"""Output directories: a run writes into a working directory and publishes it atomically.

The working directory ``<parent>/.<name>.agentmill-tmp`` carries a marker file; a crashed run
leaves only that, never a directory that looks complete, and the next run removes it. An existing
output is replaced only if it is an earlier agentmill output (it holds an agentmill manifest) or
an empty directory.

Remote outputs (``gs://``, ``s3://``, ``hdfs://``: any Beam filesystem) follow the same rules,
but object stores cannot rename a directory at once: publishing deletes the earlier output, then
moves the files one by one with ``manifest.json`` last, so a reader that finds the manifest
finds the whole output.
"""

from __future__ import annotations

import json
import os
import shutil

from apache_beam.io.filesystems import FileSystems

from pipelines import storage
from pipelines.errors import OutputError

MARKER = ".agentmill-incomplete"
MANIFEST = "manifest.json"


def is_agentmill_output(path: str) -> bool:
    try:
        return "agentmill_version" in json.loads(storage.read_text(FileSystems.join(path, MANIFEST)))
    except (OSError, ValueError):
        return False


def work_dir_for(output: str) -> str:
    if storage.is_remote(output):
        parent, name = FileSystems.split(output.rstrip("/"))
        return FileSystems.join(parent, f".{name}.agentmill-tmp")
    parent, name = os.path.split(os.path.abspath(output))
    return os.path.join(parent, f".{name}.agentmill-tmp")


def _prepare_remote(output: str) -> str:
    if storage.files_under(output) and not is_agentmill_output(output):
        raise OutputError(f"refusing to overwrite {output!r}: it is not empty and not an agentmill output")
    work = work_dir_for(output)
    if storage.files_under(work):
        if not FileSystems.exists(FileSystems.join(work, MARKER)):
            raise OutputError(f"{work!r} exists but is not an agentmill working directory; remove it")
        storage.remove_tree(work)  # left by a run that crashed
    storage.write_text(FileSystems.join(work, MARKER), "incomplete agentmill run; safe to delete\n")
    return work


def _publish_remote(work: str, output: str) -> None:
    FileSystems.delete([FileSystems.join(work, MARKER)])
    storage.remove_tree(output)
    storage.move_tree(work, output, last=MANIFEST)


def prepare(output: str) -> str:
    """Check ``output`` may be written and return a fresh working directory for the run."""
    if storage.is_remote(output):
        return _prepare_remote(output)
    output = os.path.abspath(output)
    if os.path.exists(output):
        if not os.path.isdir(output):
            raise OutputError(f"{output!r} exists and is not a directory")
        if os.listdir(output) and not is_agentmill_output(output):
            raise OutputError(f"refusing to overwrite {output!r}: it is not empty and not an agentmill output")
    work = work_dir_for(output)
    if os.path.exists(work):
        if not os.path.exists(os.path.join(work, MARKER)):
            raise OutputError(f"{work!r} exists but is not an agentmill working directory; remove it")
        shutil.rmtree(work)  # left by a run that crashed
    if os.path.isdir(f"{work}.old") and is_agentmill_output(f"{work}.old"):
        shutil.rmtree(f"{work}.old")  # an earlier output a crashed publish had moved aside
    os.makedirs(work)
    with open(os.path.join(work, MARKER), "w", encoding="utf-8") as handle:
        handle.write("incomplete agentmill run; safe to delete\n")
    return work


def publish(work: str, output: str) -> None:
    """Move the finished working directory to ``output`` (replacing an earlier output)."""
    if storage.is_remote(output):
        _publish_remote(work, output)
        return
    output = os.path.abspath(output)
    os.remove(os.path.join(work, MARKER))
    old = None
    if os.path.exists(output):
        old = f"{work}.old"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(output, old)
    os.rename(work, output)
    if old:
        shutil.rmtree(old)
