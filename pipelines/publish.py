"""Output directories: locked, written into a working directory, and published atomically.

Guarantees (see docs/concepts.md, "Publishing"):

- **One run per output.** :func:`lock_output` holds an exclusive lock on an output for the whole
  run (locally ``flock`` on ``<parent>/.<name>.agentmill-lock``, released by the kernel even when
  the run is killed; remotely a lock object at the same place). A second run to the same output
  refuses before it touches anything.
- **Nothing that looks complete unless it is.** The working directory
  ``<parent>/.<name>.agentmill-tmp`` carries a marker file; a crashed run leaves only that, and
  the next run removes it.
- **Only agentmill's own files are replaced.** An existing output is replaced only if it is
  empty or an earlier agentmill output (it holds an agentmill manifest) that holds nothing but
  what agentmill wrote (:func:`foreign_files`); otherwise the run refuses and names the files.
- **The previous output survives a crash while publishing.** It is moved aside to
  ``<work>.old`` and deleted only once the new output is in place; :func:`prepare` puts a
  moved-aside output back when a crash left no output in its place.

Remote outputs (``gs://``, ``s3://``, ``hdfs://``: any Beam filesystem) follow the same rules,
but object stores cannot rename a directory at once: publishing deletes the earlier output, then
moves the files one by one with ``manifest.json`` last, so a reader that finds the manifest
finds the whole output.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator

from apache_beam.io.filesystems import FileSystems

from pipelines import storage
from pipelines.errors import OutputError

MARKER = ".agentmill-incomplete"
MANIFEST = "manifest.json"
REJECTED = "rejected"
#: Top-level files every agentmill output may hold besides its shards and ``rejected/<step>.jsonl``.
#: Anything a run writes into its output must be listed here (or in the manifest's shards), or
#: the next run to that output refuses it as a foreign file.
OWN_FILES = frozenset({MANIFEST, "state.json", "dataset_info.json", "report.md", "report.html"})
#: How many foreign paths an error message names.
_NAMED = 10


def is_agentmill_output(path: str) -> bool:
    try:
        return "agentmill_version" in json.loads(storage.read_text(FileSystems.join(path, MANIFEST)))
    except (OSError, ValueError, TypeError):
        return False


def _split(output: str) -> tuple[str, str]:
    if storage.is_remote(output):
        return FileSystems.split(output.rstrip("/"))
    return os.path.split(os.path.abspath(output))


def _beside(output: str, suffix: str) -> str:
    parent, name = _split(output)
    join = FileSystems.join if storage.is_remote(output) else os.path.join
    return join(parent, f".{name}{suffix}")


def work_dir_for(output: str) -> str:
    """The run's working directory: ``<parent>/.<name>.agentmill-tmp``."""
    return _beside(output, ".agentmill-tmp")


def lock_path_for(output: str) -> str:
    """Where the lock of ``output`` lives: ``<parent>/.<name>.agentmill-lock``."""
    return _beside(output, ".agentmill-lock")


def _holder() -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"process {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _unwritable(path: str, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (a read-only location?)"
    return OutputError(f"cannot write to {path!r}: {reason}")


def check_output_path(output: str) -> None:
    """Refuse output paths no run may publish to, before anything is written: a symbolic link,
    something that is not a directory, the current directory or a folder that holds it."""
    if storage.is_remote(output):
        return
    path = os.path.abspath(output)
    if os.path.islink(path):
        raise OutputError(f"{path!r} is a symbolic link; give the directory it points to, or another path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path!r} exists and is not a directory")
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        return
    real = os.path.realpath(path)
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise OutputError(
            f"{path!r} is the current directory or holds it; a run replaces its output, so give a new "
            "folder below it (e.g. -o out)"
        )


@contextlib.contextmanager
def lock_output(output: str) -> Iterator[None]:
    """Hold the exclusive lock of ``output`` for the ``with`` block; :class:`OutputError` at once
    (nothing touched) when another run holds it."""
    if storage.is_remote(output):
        with _lock_remote(output):
            yield
        return
    path = lock_path_for(output)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise _unwritable(parent, exc) from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _unwritable(parent, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise OutputError(
                f"another agentmill run is writing {os.path.abspath(output)!r} ({_describe(holder)}); "
                f"wait for it to finish (lock: {path})"
            ) from None
        except OSError as exc:  # a filesystem without locks (some network or FUSE mounts)
            os.close(fd)
            raise OutputError(f"cannot lock {path!r}: {exc.strerror or exc}; write the output elsewhere") from None
        # The holder before us unlinks the file when it ends: a lock on an unlinked file is no lock.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder()).encode("utf-8"))
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _lock_remote(output: str) -> Iterator[None]:
    """A lock object (object stores have no locks): refused while it exists, unless it names a
    process of this host that is gone. A run killed elsewhere leaves it; the message says so."""
    path = lock_path_for(output)
    holder = _holder()
    token = f"{holder['host']}:{holder['pid']}:{time.time_ns()}"
    if FileSystems.exists(path):
        text = storage.read_text(path)
        try:
            info = json.loads(text)
            stale = info["host"] == holder["host"] and not _pid_alive(int(info["pid"]))
        except (ValueError, KeyError, TypeError):
            stale = False
        if not stale:
            raise OutputError(
                f"another agentmill run is writing {output!r} ({_describe(text)}); wait for it to finish, "
                f"or delete {path} if that run was killed"
            )
    storage.write_text(path, json.dumps({**holder, "token": token}))
    try:
        won = json.loads(storage.read_text(path)).get("token") == token
    except (OSError, ValueError):
        won = False
    if not won:
        raise OutputError(f"another agentmill run took the lock of {output!r} at the same moment ({path})")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            if json.loads(storage.read_text(path)).get("token") == token:
                FileSystems.delete([path])


def foreign_files(output: str) -> list[str]:
    """Paths (relative to ``output``; folders end in ``/``) in an agentmill output that
    agentmill did not write: anything but :data:`OWN_FILES`, the shards its manifest lists and
    ``rejected/<step>.jsonl`` of its steps."""
    try:
        manifest = json.loads(storage.read_text(FileSystems.join(output, MANIFEST)))
    except (OSError, ValueError):
        manifest = {}
    own = set(OWN_FILES)
    shards = (manifest.get("output") or {}).get("shards") or []
    own |= {s.get("filename", "") for s in shards if isinstance(s, dict)}
    own |= {f"{REJECTED}/{step}.jsonl" for step in manifest.get("steps") or {}}
    if storage.is_remote(output):
        prefix = output.rstrip("/") + "/"
        return sorted(p[len(prefix) :] for p in storage.files_under(output) if p[len(prefix) :] not in own)
    foreign = []
    for root, dirs, names in os.walk(output):
        rel_root = os.path.relpath(root, output)
        rel = "" if rel_root == "." else rel_root + "/"
        for name in sorted(dirs):
            if os.path.islink(os.path.join(root, name)) or (rel + name) != REJECTED:
                foreign.append(f"{rel}{name}/")
        dirs[:] = [d for d in dirs if (rel + d) == REJECTED and not os.path.islink(os.path.join(root, d))]
        foreign.extend(rel + name for name in names if rel + name not in own)
    return sorted(foreign)


def _refuse_foreign(output: str) -> None:
    foreign = foreign_files(output)
    if foreign:
        named = ", ".join(foreign[:_NAMED]) + (f" and {len(foreign) - _NAMED} more" if len(foreign) > _NAMED else "")
        raise OutputError(
            f"refusing to replace {output!r}: it holds files agentmill did not write ({named}); "
            "move them elsewhere, or choose another output"
        )


def _prepare_remote(output: str) -> str:
    work = work_dir_for(output)
    unmarked = storage.files_under(work) and not FileSystems.exists(FileSystems.join(work, MARKER))
    if unmarked and is_agentmill_output(work) and not is_agentmill_output(output):
        # A publish died while moving files: the earlier output is already deleted and the new
        # one complete in ``work`` (its manifest moves last). Finish the move.
        storage.move_tree(work, output, last=MANIFEST)
    if storage.files_under(output):
        if not is_agentmill_output(output):
            raise OutputError(f"refusing to overwrite {output!r}: it is not empty and not an agentmill output")
        _refuse_foreign(output)
    if storage.files_under(work):
        if not FileSystems.exists(FileSystems.join(work, MARKER)) and not is_agentmill_output(work):
            raise OutputError(f"{work!r} exists but is not an agentmill working directory; remove it")
        storage.remove_tree(work)  # left by a run that crashed
    storage.write_text(FileSystems.join(work, MARKER), "incomplete agentmill run; safe to delete\n")
    return work


def _publish_remote(work: str, output: str) -> None:
    if storage.files_under(output):
        _refuse_foreign(output)
    FileSystems.delete([FileSystems.join(work, MARKER)])
    storage.remove_tree(output)
    storage.move_tree(work, output, last=MANIFEST)


def _remove_tree(path: str) -> None:
    """Delete a directory of ours; a partial deletion is finished by the next run."""
    shutil.rmtree(path)


def recover(output: str) -> None:
    """Finish what a run that crashed while publishing to ``output`` left (call under the lock).

    The states publishing passes through, and what is done here:

    - working directory with its marker (the run had not finished): deleted;
    - working directory complete, marker removed, earlier output still in place: deleted;
    - earlier output moved aside to ``<work>.old`` and no output in its place: moved back, then
      the unpublished working directory deleted (the earlier output is never deleted before a
      new one is in place);
    - new output in place and ``<work>.old`` left (or partly deleted): ``<work>.old`` deleted.
    """
    output = os.path.abspath(output)
    work = work_dir_for(output)
    old = f"{work}.old"
    if os.path.lexists(work) and not os.path.exists(os.path.join(work, MARKER)) and not is_agentmill_output(work):
        raise OutputError(f"{work!r} exists but is not an agentmill working directory; remove it")
    if os.path.lexists(old):
        if os.path.islink(old) or not os.path.isdir(old):
            raise OutputError(f"{old!r} exists and is not an agentmill output moved aside; remove it")
        if not os.path.lexists(output):
            if not is_agentmill_output(old):
                raise OutputError(
                    f"{old!r} was moved aside by an interrupted publish but is incomplete, and {output!r} is "
                    "missing; check and remove it"
                )
            os.rename(old, output)  # the earlier output goes back where it was
        elif is_agentmill_output(output):
            _remove_tree(old)  # the new output was in place: the earlier one had been superseded
        else:
            raise OutputError(
                f"{old!r} was moved aside by an interrupted publish and {output!r} is not an agentmill output; "
                "check both and remove one"
            )
    if os.path.lexists(work):
        _remove_tree(work)


def prepare(output: str) -> str:
    """Check ``output`` may be written, recover from an interrupted publish, and return a fresh
    working directory for the run. Call under :func:`lock_output`."""
    check_output_path(output)
    if storage.is_remote(output):
        return _prepare_remote(output)
    output = os.path.abspath(output)
    work = work_dir_for(output)
    try:
        recover(output)
        if os.path.exists(output) and os.listdir(output):
            if not is_agentmill_output(output):
                raise OutputError(f"refusing to overwrite {output!r}: it is not empty and not an agentmill output")
            _refuse_foreign(output)
        os.makedirs(work)
        with open(os.path.join(work, MARKER), "w", encoding="utf-8") as handle:
            handle.write("incomplete agentmill run; safe to delete\n")
    except OSError as exc:
        raise _unwritable(os.path.dirname(work), exc) from None
    return work


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """Ctrl-C waits until the block is done (a publish takes milliseconds and must not stop half
    way); only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def publish(work: str, output: str) -> None:
    """Move the finished working directory to ``output`` (replacing an earlier output). Refuses
    (:class:`OutputError`, nothing published) when the output gained foreign files during the run."""
    if storage.is_remote(output):
        _publish_remote(work, output)
        return
    output = os.path.abspath(output)
    with _no_interrupt():
        if os.path.exists(output) and os.listdir(output):
            if not is_agentmill_output(output):
                raise OutputError(f"refusing to overwrite {output!r}: it is not empty and not an agentmill output")
            _refuse_foreign(output)
        os.remove(os.path.join(work, MARKER))
        old = None
        if os.path.lexists(output):
            old = f"{work}.old"
            os.rename(output, old)
        try:
            os.rename(work, output)
        except OSError:
            if old is not None and not os.path.lexists(output):
                os.rename(old, output)  # put the earlier output back before reporting
            raise
        if old is not None:
            with contextlib.suppress(OSError):  # the new output is in place; the next run finishes this
                _remove_tree(old)
