"""Import Apache Beam without importing pandas (issue 16: small fixed cost).

``import apache_beam`` imports pandas whenever it is installed (``datasets`` and TRL install it)
to register Beam's pandas batch converters (``apache_beam.typehints.pandas_type_compatibility``):
0.25-0.3 s of the ~1 s that Beam's import takes here, for converters no agentmill step uses.
:func:`import_beam` imports Beam while ``import pandas`` raises ``ImportError`` (Beam catches it
and skips the converters), then registers the converters the moment anything imports pandas,
as Beam would have done at its own import: a user transform that batches into DataFrames finds
Beam as usual.

``agentmill run`` calls it before anything imports Beam. When Beam or pandas is already
imported, it does nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType

PANDAS_CONVERTERS = "apache_beam.typehints.pandas_type_compatibility"


def import_beam() -> None:
    """Import ``apache_beam``; pandas, and Beam's converters for it, wait until pandas is imported."""
    if "apache_beam" in sys.modules or "pandas" in sys.modules:
        return
    sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` raise ImportError
    try:
        import apache_beam  # noqa: F401
    finally:
        if "pandas" in sys.modules and sys.modules["pandas"] is None:
            del sys.modules["pandas"]
    if PANDAS_CONVERTERS not in sys.modules:
        sys.meta_path.insert(0, AfterImport("pandas", lambda: importlib.import_module(PANDAS_CONVERTERS)))


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then()`` right after the top-level module ``name`` is first imported (in the
    importing thread, before its ``import`` statement returns). It finds nothing itself: it asks
    the other finders for ``name`` and wraps the loader they return, then leaves ``sys.meta_path``."""

    def __init__(self, name: str, then: Callable[[], object]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):  # one use only (another import may have removed it)
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoadThen(spec.loader, self.then)
        return spec


class _LoadThen(importlib.abc.Loader):
    """``loader``, then ``then()``; the module keeps ``loader`` as its own."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[], object]) -> None:
        self.loader = loader
        self.then = then

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.then()
