"""Beam's worker processes forked from a warm copy of the runner instead of started cold.

With ``--direct_running_mode=multi_processing`` the FnApiRunner starts each worker as a new
``python -m apache_beam.runners.worker.sdk_worker_main`` process, which spends about a second
importing Beam, pyarrow, pydantic and the steps' modules before it can take its first bundle,
while the runner waits (issue 16: a tenth of a 30k-trajectory run with 2 workers).

:class:`ForkedWorkersRunner` is that same runner with one change: the worker command. Once the
pipeline is built (every module a worker needs is imported) and before the runner starts its
gRPC servers, :func:`forked_workers` forks a *zygote*: an idle copy of the runner process that
has never touched gRPC. Beam still starts a worker the way it always does (a command, with the
control address in its environment); the command is now a tiny client (``python -S``, stdlib
only) that hands its environment to the zygote over a Unix socket and waits. The zygote forks a
worker, which runs Beam's own ``sdk_worker_main.main`` with that environment and, when the
harness ends, sends its exit status back to the client, which exits with it.

Guarantees:

- the workers run the same harness, get the same options and environment, and produce the
  same results as Beam's cold-started ones (the tests compare shards across both);
- they stay descendants of the runner: the zygote reaps each worker and the runner reaps the
  zygote, so CPU time and exit statuses are accounted as before (the runner waits for the
  zygote at the end of the run and kills it after ``REAP_SECONDS`` if a worker never ends);
- what the workers inherit is frozen out of the garbage collector's reach (``gc.freeze`` in
  the zygote), as the ``agentmill`` command does for the runner: their full collections walk
  only what they create;
- a client that cannot reach the zygote starts Beam's usual worker instead (``exec``), so the
  run never depends on the zygote being there;
- the zygote holds no file of the run open (every descriptor but its socket and the pipe to
  the runner is closed), so an output lock is released when the runner releases it; it exits
  when the runner closes the pipe (or dies) and its workers are done.

Forking is used on Linux only, and only while the process has not run gRPC yet (the first
multi-processing run of a process, which is every ``agentmill run``): gRPC's threads do not
survive a fork, so a later multi-processing run in the same process (a notebook, a test
session) starts its workers cold, as Beam does. ``AGENTMILL_FORKED_WORKERS=0`` turns forking
off.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import select
import shlex
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import environments

from transforms import background

#: Environment variable: ``0`` starts workers cold (Beam's own command) even on Linux.
SWITCH = "AGENTMILL_FORKED_WORKERS"
_SIZE = struct.Struct(">I")

#: The worker command's program: stdlib only, run with ``python -S`` (about 10 ms to start).
CLIENT_CODE = """
import json, os, socket, struct, sys
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
except OSError:
    os.execv(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"])
payload = json.dumps(dict(os.environ)).encode("utf-8")
s.sendall(struct.pack(">I", len(payload)) + payload)
reply = b""
while chunk := s.recv(64):
    reply += chunk
sys.exit(int(reply) if reply.strip().isdigit() else 1)
"""


def enabled() -> bool:
    """Whether multi-processing runs fork their workers (Linux, unless switched off)."""
    return sys.platform.startswith("linux") and os.environ.get(SWITCH, "1") != "0"


class ForkedWorkersRunner(FnApiRunner):
    """The FnApiRunner whose multi-processing workers are forked (see the module docstring).

    Everything else (bundling, the split of each stage across ``direct_num_workers``, the
    multi-processing mode that the options ask for) is the FnApiRunner's own; only the
    environment's command changes, and only while :func:`forked_workers` has a zygote."""

    def __init__(self) -> None:
        self._worker_command: str | None = None
        super().__init__()

    @property
    def _default_environment(self) -> Any:
        chosen = self.__dict__.get("_chosen_environment")
        if self._worker_command is not None and isinstance(chosen, environments.SubprocessSDKEnvironment):
            return environments.SubprocessSDKEnvironment.from_command_string(command_string=self._worker_command)
        return chosen

    @_default_environment.setter
    def _default_environment(self, value: Any) -> None:  # set by the FnApiRunner itself
        self.__dict__["_chosen_environment"] = value


def _receive(conn: socket.socket) -> dict[str, str]:
    header = b""
    while len(header) < _SIZE.size:
        chunk = conn.recv(_SIZE.size - len(header))
        if not chunk:
            raise OSError("the worker client hung up")
        header += chunk
    (size,) = _SIZE.unpack(header)
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(1 << 16, size - len(data)))
        if not chunk:
            raise OSError("the worker client hung up")
        data += chunk
    return json.loads(bytes(data))


def _close_other_descriptors(keep: set[int]) -> None:
    """Close every open descriptor but ``keep`` and stdio (the run's lock file among them)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _run_worker(conn: socket.socket, env: dict[str, str]) -> None:
    """In a forked worker: Beam's harness with the client's environment; the exit status goes
    back to the client. Never returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(env)
        from apache_beam.runners.worker import sdk_worker_main

        sdk_worker_main.main([])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # reported by the harness's own logging; status 1
        code = 1
    finally:
        with contextlib.suppress(OSError):
            conn.sendall(str(code).encode("ascii"))
            conn.close()
        os._exit(code)


def _zygote(listener: socket.socket, runner_alive: int) -> None:
    """The forked copy of the runner: forks one worker per request until the runner closes the
    pipe, then waits for its workers and exits. Never returns."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's (and workers') to handle
        _close_other_descriptors({listener.fileno(), runner_alive})
        # Fresh stdio objects: a thread of the runner may have held their locks at the fork.
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        logging.root.handlers = []  # a worker's log goes to the runner (Beam's logging service)
        from transforms import progress

        progress.listen(None)  # the runner's live display is not the workers' to drive
        # What the runner built (modules, the pipeline, what the steps prefetched) lives as long
        # as each worker: frozen out of the collector's reach, a worker's full collections walk
        # only its own objects (~0.14 s each otherwise, for a million inherited objects) and do
        # not copy the shared pages they would touch (Python's advice for fork servers).
        gc.freeze()
        workers: set[int] = set()
        while True:
            ready, _, _ = select.select([listener, runner_alive], [], [])
            if runner_alive in ready:
                break
            conn, _ = listener.accept()
            try:
                env = _receive(conn)
            except (OSError, ValueError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                os.close(runner_alive)
                _run_worker(conn, env)
            conn.close()
            workers.add(pid)
            with contextlib.suppress(ChildProcessError):
                while workers and (done := os.waitpid(-1, os.WNOHANG))[0]:
                    workers.discard(done[0])
        for pid in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    except BaseException:  # a zygote must never return into the runner's code
        code = 1
    os._exit(code)


#: Whether this process has started a run that uses gRPC (multi-processing or multi-threading
#: workers, a portable or remote runner). gRPC's threads do not survive a fork: a process forked
#: after that can hang in its first call, so from then on workers start cold.
_grpc_started = False


def _uses_grpc(runner: Any, options: Any) -> bool:
    from apache_beam.options.pipeline_options import DirectOptions

    if not isinstance(runner, FnApiRunner):
        return True
    return options.view_as(DirectOptions).direct_running_mode != "in_memory"


def _forks(runner: Any, options: Any) -> bool:
    from apache_beam.options.pipeline_options import DirectOptions

    multi_processing = options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    return isinstance(runner, ForkedWorkersRunner) and multi_processing and enabled() and not _grpc_started


def workers_in_process(runner: Any, options: Any) -> bool:
    """Whether a run of ``runner`` has its workers in this very process: the FnApiRunner in
    memory or on threads (not multi-processing, forked or not)."""
    from apache_beam.options.pipeline_options import DirectOptions

    if not isinstance(runner, FnApiRunner):
        return False
    return options.view_as(DirectOptions).direct_running_mode != "multi_processing"


def workers_here(runner: Any, options: Any) -> bool:
    """Whether a run of ``runner`` has its workers in this process (the FnApiRunner in memory
    or on threads) or forked from it by :func:`forked_workers`: what this process loads before
    the run, its workers then have."""
    return workers_in_process(runner, options) or _forks(runner, options)


@contextlib.contextmanager
def forked_workers(runner: Any, options: Any) -> Iterator[None]:
    """While inside, a multi-processing run of ``runner`` (a :class:`ForkedWorkersRunner`)
    forks its workers from a zygote; any other run, a process that has already run gRPC, or
    forking switched off: Beam's own workers. Enter it after the pipeline is built and before
    it runs (the zygote is forked on entry)."""
    global _grpc_started
    if not _forks(runner, options):
        _grpc_started = _grpc_started or _uses_grpc(runner, options)
        yield
        return
    _grpc_started = True
    folder = tempfile.mkdtemp(prefix="agentmill-workers-")
    path = os.path.join(folder, "zygote.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    alive_read, alive_write = os.pipe()
    background.wait()  # what the steps prefetch, the workers inherit (and no loader holds a lock)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(alive_write)
        _zygote(listener, alive_read)
    os.close(alive_read)
    listener.close()
    runner._worker_command = f"{shlex.quote(sys.executable)} -S -c {shlex.quote(CLIENT_CODE)} {shlex.quote(path)}"
    try:
        yield
    finally:
        runner._worker_command = None
        os.close(alive_write)
        _reap(pid)
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(folder)


#: Seconds the runner waits for the zygote (and so its workers) to exit once the run is over.
REAP_SECONDS = 60.0


def _reap(pid: int, seconds: float = REAP_SECONDS) -> None:
    """Wait for the zygote to exit; one still there after ``seconds`` (a worker that does not
    end after its runner closed the control channel) is killed, so a run never hangs on it."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.01)
