"""Loading, on background threads, what a run's workers will need (a language model, say).

A step or an audit check names what it will load in its ``prefetch()``; the run calls those
hooks before it builds the graph, and only when the workers run in this process or are forked
from it (the local runners), so the load overlaps with building the graph and starting the
runner instead of stalling the first bundle that needs it. Worth it only for loads that release
the GIL (decompression, file reads, numpy), which is what overlaps.

Guarantees: each named load starts at most once per process; a loader must be idempotent and
thread-safe, as the worker calls the same loader when it needs the result (and so waits for the
background load, or repeats it if it failed: a failure here is dropped, the worker's own call
raises it where errors are handled). :func:`wait` returns once every started load is over; call
it before ``os.fork``, which copies only the calling thread (a lock held by a loader would stay
held in the child).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

_started: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def start(name: str, loader: Callable[[], object]) -> None:
    """Run ``loader`` on a daemon thread, unless a load named ``name`` was started before."""
    with _lock:
        if name in _started:
            return
        thread = threading.Thread(target=_quietly, args=(loader,), name=f"agentmill-load-{name}", daemon=True)
        _started[name] = thread
        thread.start()


def _quietly(loader: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        loader()


def wait() -> None:
    """Return once every load started so far has ended."""
    with _lock:
        threads = list(_started.values())
    for thread in threads:
        thread.join()
