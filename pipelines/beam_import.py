"""Import Apache Beam without the dependencies no agentmill run uses (issue 16: small fixed cost).

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

Three more of Beam's imports serve only functions that an ``agentmill run`` on this machine never
calls (together about 0.25 s of Beam's import); they wait until used, and everything they serve
works as with a plain import:

- ``requests`` (for GCE metadata, ``apache_beam.io.gcp.gce_metadata_util``) and ``httplib2``
  (Beam's HTTP client for staging, with ``pyparsing``) are imported by Beam as whole modules and
  used inside functions only: while Beam imports, they are stand-ins
  (:class:`transforms.deferred_imports.StandIn`) that import the real module on the first
  access of an attribute; only Beam's modules hold them, anyone importing them later gets the
  real ones.
- ``pymongo`` (and its ``bson``): ``apache_beam.io.mongodbio`` imports its client classes in a
  ``try`` and, without pymongo, leaves them ``None`` (logging "Could not find a compatible bson
  package"). Beam imports with both hidden and that message silenced; the first import of
  pymongo (which ``ReadFromMongoDB`` and ``WriteToMongoDB`` now do first) fills in what the
  module would have imported, and gives the two transforms their own ``__init__`` back.
- ``beartype``: ``apache_beam.typehints.typehints`` imports ``is_subhint`` (and the exception it
  raises) for one branch of ``is_consistent_with``; until that branch first runs, the name is a
  function that imports beartype's and puts both names in place.

``agentmill run`` calls it before anything imports Beam. When Beam is already imported it does
nothing; each deferral is skipped when its module is already imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType

from transforms.deferred_imports import StandIn, import_with_stand_ins

PANDAS_CONVERTERS = "apache_beam.typehints.pandas_type_compatibility"
TEXTIO = "apache_beam.io.textio"
#: What ``apache_beam.io.textio`` defines only when pandas imports (stubs otherwise).
TEXTIO_PANDAS_TRANSFORMS = ("ReadFromCsv", "WriteToCsv", "ReadFromJson", "WriteToJson")


MONGODBIO = "apache_beam.io.mongodbio"
#: The transforms of ``apache_beam.io.mongodbio`` that a user constructs (the rest come from them).
MONGODB_TRANSFORMS = ("ReadFromMongoDB", "WriteToMongoDB")
TYPEHINTS = "apache_beam.typehints.typehints"
#: Modules Beam imports whole and uses only inside functions: stand-ins while Beam imports.
DEFERRED_MODULES = ("requests", "httplib2")
#: Held while Beam imports with stand-ins in ``sys.modules`` (see :mod:`transforms.deferred_imports`).
_IMPORT_LOCK = threading.RLock()


def import_beam() -> None:
    """Import ``apache_beam``; pandas, pymongo and beartype wait until they are imported or
    used, ``requests`` and ``httplib2`` until Beam uses them (see the module docstring)."""
    with _IMPORT_LOCK:
        if "apache_beam" in sys.modules:
            return
        hidden = [name for name in ("pandas", "pymongo", "bson") if name not in sys.modules]
        beartype = {} if "beartype" in sys.modules else _beartype_stand_ins()
        deferred = {name: StandIn(name, _IMPORT_LOCK) for name in DEFERRED_MODULES if name not in sys.modules}
        mongo_log = logging.getLogger(MONGODBIO)
        was_disabled = mongo_log.disabled
        mongo_log.disabled = "pymongo" in hidden  # Beam's warning about the pymongo it cannot see
        try:  # a hidden module is None in sys.modules: importing it raises ImportError
            import_with_stand_ins("apache_beam", {**dict.fromkeys(hidden), **beartype, **deferred}, _IMPORT_LOCK)
        finally:
            mongo_log.disabled = was_disabled
    if "pandas" in hidden and PANDAS_CONVERTERS not in sys.modules:  # else pandas came another way
        for name in TEXTIO_PANDAS_TRANSFORMS:
            _set_textio_transform(name, _importing_pandas_first(name))
        sys.meta_path.insert(0, AfterImport("pandas", _as_beam_would_with_pandas))
    if "pymongo" in hidden and getattr(sys.modules.get(MONGODBIO), "MongoClient", True) is None:
        for name in MONGODB_TRANSFORMS:
            _import_pymongo_first(getattr(sys.modules[MONGODBIO], name))
        sys.meta_path.insert(0, AfterImport("pymongo", _as_beam_would_with_pymongo))
    if beartype:
        typehints = sys.modules[TYPEHINTS]
        if typehints.is_subhint is _is_subhint:  # else beartype came another way
            typehints.BeartypeDoorException = _NotYetImported


def _as_beam_would_with_pandas() -> None:
    """What Beam's import does when pandas imports: register the pandas batch converters, and
    define textio's four pandas transforms (from a second execution of ``textio``'s source, so
    the classes of the module everyone already holds stay the same objects)."""
    importlib.import_module(PANDAS_CONVERTERS)
    fresh = _fresh_execution(TEXTIO)
    if fresh is None:
        return
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


def _fresh_execution(name: str) -> ModuleType | None:
    """Module ``name`` executed again in a new module object (the one in ``sys.modules`` and
    everything defined in it stay as they are)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    return fresh


# --- pymongo ---------------------------------------------------------------------------------------


def _import_pymongo_first(transform: type) -> None:
    """Make ``transform`` import pymongo (completing ``mongodbio``) before its own ``__init__``;
    :func:`_as_beam_would_with_pymongo` gives it back its own."""
    init = transform.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        with contextlib.suppress(ImportError):  # without pymongo, Beam's own failure follows
            import pymongo  # noqa: F401

        init(self, *args, **kwargs)

    __init__.__beam_init__ = init  # type: ignore[attr-defined]
    transform.__init__ = __init__


def _as_beam_would_with_pymongo() -> None:
    """Put in ``mongodbio`` what its import would have imported with pymongo there: every name
    it left ``None`` gets its value from a second execution of its source (its classes stay the
    same objects); its transforms get their own ``__init__`` back."""
    module = sys.modules[MONGODBIO]
    fresh = _fresh_execution(MONGODBIO)
    if fresh is not None:
        for name, value in vars(fresh).items():
            if value is not None and name in vars(module) and getattr(module, name) is None:
                setattr(module, name, value)
    for name in MONGODB_TRANSFORMS:
        transform = getattr(module, name)
        transform.__init__ = getattr(transform.__init__, "__beam_init__", transform.__init__)


# --- beartype --------------------------------------------------------------------------------------


class _NotYetImported(Exception):
    """Beam's ``BeartypeDoorException`` until beartype is imported (nothing raises it before)."""


def _is_subhint(sub: object, base: object) -> bool:
    """beartype's ``is_subhint``, imported on the first call, which also puts it and beartype's
    ``BeartypeDoorException`` in ``apache_beam.typehints.typehints`` in place of the stand-ins."""
    from beartype.door import is_subhint
    from beartype.roar import BeartypeDoorException

    if is_subhint is _is_subhint:
        raise ImportError("beartype.door.is_subhint while Beam imports")
    typehints = sys.modules[TYPEHINTS]
    typehints.BeartypeDoorException = BeartypeDoorException
    typehints.is_subhint = is_subhint
    return is_subhint(sub, base)


def _beartype_stand_ins() -> dict[str, ModuleType]:
    """``beartype``, ``beartype.door`` and ``beartype.roar`` for the time of Beam's import: what
    ``apache_beam.typehints.typehints`` imports from them (``is_subhint`` is :func:`_is_subhint`)."""
    package = ModuleType("beartype", "stands in for beartype while Beam imports")
    package.__path__ = []
    door = ModuleType("beartype.door")
    door.is_subhint = _is_subhint  # type: ignore[attr-defined]
    roar = ModuleType("beartype.roar")
    roar.BeartypeDoorException = _NotYetImported  # type: ignore[attr-defined]
    package.door, package.roar = door, roar  # type: ignore[attr-defined]
    return {"beartype": package, "beartype.door": door, "beartype.roar": roar}


# --- after an import -------------------------------------------------------------------------------


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
