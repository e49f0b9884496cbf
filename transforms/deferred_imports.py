"""Stand-in modules: importing a package without importing one of its dependencies until used.

Some packages import a heavy dependency at import time and use it only inside functions that a
run may never call (datasketch imports ``scipy.integrate`` for ``quad``; Beam imports
``requests`` and ``httplib2`` for GCE metadata and staging). A :class:`StandIn` takes the
dependency's place in ``sys.modules`` while the package imports (its *window*, under ``lock``)
and is removed right after, so the package's module holds the stand-in and everyone else who
imports the dependency later gets the real one. :func:`import_with_stand_ins` opens the window;
it also takes ``None`` for a module the package should import as if it were not installed.

Guarantees of a stand-in for module ``name``:

- every attribute (but dunder names) is the real module's, imported on first access; names in
  ``functions`` are functions defined on the stand-in itself (for ``from name import f``, which
  binds at import time), each calling the real ``name.f``;
- an access while the window is open in the same thread (the package's import itself reads an
  attribute) ends the window for this module early: the stand-in leaves ``sys.modules`` and the
  real module is imported, so the package imports exactly as without a stand-in;
- another thread that accesses an attribute while the window is open waits for it to close
  (``lock`` is held for the window's duration) and then gets the real module's attribute.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class StandIn(types.ModuleType):
    """Stands in for module ``name`` (see the module docstring)."""

    def __init__(self, name: str, lock: threading.RLock, functions: Iterable[str] = ()) -> None:
        super().__init__(name, f"stands in for {name}, imported when first used")
        self.__stand_in_lock__ = lock
        for function in functions:
            setattr(self, function, self._forwarding(function))

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.real(), attr)

    def real(self) -> types.ModuleType:
        """The real module, imported if it is not yet (ending the window for it if still open)."""
        with self.__stand_in_lock__:  # held by the window
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            return importlib.import_module(self.__name__)

    def _forwarding(self, function: str) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return getattr(self.real(), function)(*args, **kwargs)

        forward.__name__ = forward.__qualname__ = function
        forward.__doc__ = f"``{self.__name__}.{function}``, imported on the first call."
        return forward


def import_with_stand_ins(package: str, window: Mapping[str, types.ModuleType | None], lock: threading.RLock) -> None:
    """Import ``package`` with ``window`` in ``sys.modules`` for the time of its import (under
    ``lock``): each name maps to a stand-in, or to ``None``, which makes importing that name raise
    ``ImportError`` (the package then imports as if it were not installed). Names already
    imported are left as they are. Each entry still in ``sys.modules`` afterwards is removed."""
    with lock:
        used = {name: module for name, module in window.items() if name not in sys.modules}
        sys.modules.update(used)  # type: ignore[arg-type]
        try:
            importlib.import_module(package)
        finally:
            for name, module in used.items():
                if name in sys.modules and sys.modules[name] is module:
                    del sys.modules[name]


__all__ = ["StandIn", "import_with_stand_ins"]
