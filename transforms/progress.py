"""Process-local progress reports from steps to whoever listens (the CLI's live display).

Reports reach a listener only when the step runs in the same process as the caller (Beam's
default in-process runner); on other runners nothing listens and a report costs one ``None``
check. Reports never affect results.
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str, int], None]
_listener: Listener | None = None


def listen(listener: Listener | None) -> None:
    """Install (or, with ``None``, remove) the listener of this process."""
    global _listener
    _listener = listener


def report(step_id: str, records: int) -> None:
    """Tell the listener, if any, that ``step_id`` handled ``records`` more records."""
    if _listener is not None:
        _listener(step_id, records)
