"""Import Apache Beam without importing pandas (issue 16: small fixed cost).

``import apache_beam`` imports pandas whenever it is installed (``datasets`` and TRL install it):
0.25-0.3 s of the ~1 s that Beam's import takes here, for two things no agentmill step uses:
Beam's pandas batch converters (``apache_beam.typehints.pandas_type_compatibility``) and
``textio``'s pandas-based ``ReadFromCsv``, ``WriteToCsv``, ``ReadFromJson`` and ``WriteToJson``
(also ``beam.io.*``). :func:`import_beam` imports Beam while ``import pandas`` raises
``ImportError`` (Beam catches it: no converters, and the four transforms are stubs that ask to
install pandas), then makes the import of pandas, whenever anything does it, do what Beam's
import would have done: register the converters and put the real four transforms in place.
Until then, calling one of the four imports pandas first. A user transform that batches into
DataFrames or reads CSV finds Beam as usual.

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
TEXTIO = "apache_beam.io.textio"
#: What ``apache_beam.io.textio`` defines only when pandas imports (stubs otherwise).
TEXTIO_PANDAS_TRANSFORMS = ("ReadFromCsv", "WriteToCsv", "ReadFromJson", "WriteToJson")


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
    if PANDAS_CONVERTERS in sys.modules:  # pandas came in some other way: nothing was skipped
        return
    for name in TEXTIO_PANDAS_TRANSFORMS:
        _set_textio_transform(name, _importing_pandas_first(name))
    sys.meta_path.insert(0, AfterImport("pandas", _as_beam_would_with_pandas))


def _as_beam_would_with_pandas() -> None:
    """What Beam's import does when pandas imports: register the pandas batch converters, and
    define textio's four pandas transforms (from a second execution of ``textio``'s source, so
    the classes of the module everyone already holds stay the same objects)."""
    importlib.import_module(PANDAS_CONVERTERS)
    spec = importlib.util.find_spec(TEXTIO)
    if spec is None or spec.loader is None:
        return
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    for name in TEXTIO_PANDAS_TRANSFORMS:
        _set_textio_transform(name, getattr(fresh, name))


def _set_textio_transform(name: str, transform: Callable[..., object]) -> None:
    """``transform`` as ``apache_beam.io.textio.<name>`` and ``apache_beam.io.<name>``."""
    setattr(sys.modules[TEXTIO], name, transform)
    setattr(sys.modules["apache_beam.io"], name, transform)


def _importing_pandas_first(name: str) -> Callable[..., object]:
    """textio's ``name``, called after importing pandas (which puts the real one in place)."""

    def transform(*args, **kwargs):
        import pandas  # noqa: F401

        return getattr(sys.modules[TEXTIO], name)(*args, **kwargs)

    transform.__name__ = transform.__qualname__ = name
    return transform


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
