"""Graph construction without Beam's repeated introspection (issue 16: small fixed cost).

Building and submitting the demo's graph (about 450 transforms) cost Beam 2.77 about 5 s of a 7.5 s run:

* ``apache_beam.typehints.decorators.get_signature`` ran ``inspect.signature`` about 48,000
  times, mostly from ``userstate.get_dofn_specs``, which inspects every method of every DoFn
  each time a ParDo is applied, validated or serialized; the same few hundred functions are
  inspected over and over.
* ``PipelineOptions.view_as`` built a fresh ``argparse`` parser with every option of every
  options class about 1,900 times (per transform applied and per type-consistency check).

:func:`apply` memoizes them, keeping their results exactly:

* a signature is cached per plain Python function (``types.FunctionType``); a bound method's is
  derived from its function's as ``inspect`` itself does (the first parameter dropped). Every
  other callable (builtins, partials, classes, callable objects) is inspected as before.
  ``inspect.Signature`` objects are immutable, so sharing one is safe.
* the state and timer specs of a DoFn are cached per DoFn object (Beam asked about eight
  times per ParDo, inspecting every method each time).
* a view is cached per (options object, view class). Views share their options' underlying
  dictionary (that is how Beam defines them), so a cached view reads and writes exactly what a
  new one would; the cache holds options objects weakly.
* whether a DoFn's ``process`` both yields and returns (Beam warns if so) is cached per
  function: ``ParDo`` reads and tokenizes the method's source each time (175 times for the
  demo, mostly the same few methods).

And one wait at the end of every bundle:

* Beam's state sampler (it times each step for the ``msecs`` metrics) sleeps on its own thread
  in steps that grow from 2 ms to 200 ms, and a bundle's end joins that thread, so a bundle
  that ran a few seconds or more waited on average 100 ms for the sleep to end (two long stages
  of read -> to_chat -> write: 0.05-0.3 s of a 15 s run, 0.02-0.03 s with a 20 ms ceiling).
  The ceiling is now :data:`SAMPLING_PERIOD_MS` (2 ms): the demo's 43 short bundles waited
  1.1-1.6 ms each with 20 ms, about 0.9 ms now. Only the ceiling changes (Beam's default
  argument); the sampler wakes at most 500 times a second, each wake a few microseconds
  without the GIL.

And, for a run whose workers are in this process (:func:`uncompressed_payloads`), no bz2:

* Beam pickles every DoFn, CombineFn and coder it puts in the pipeline's proto and compresses
  each pickle with bz2 at level 9 (to keep protos small for remote runners); the in-process
  worker then decompresses each one, re-pickles each ParDo's with its windowing (compressing
  again) and decompresses that once more. For the demo, 446 compressions and 886
  decompressions: 0.25-0.3 s of a 3 s run, for bytes that never leave the process.

Nothing here changes what a pipeline computes: the shard equality tests run with it.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import inspect
import threading
import types
import weakref
from collections.abc import Hashable, Iterator
from typing import Any

_applied = False
#: The state sampler's longest sleep, in ms (Beam's: 200): the longest a bundle's end waits.
SAMPLING_PERIOD_MS = 2


def _bound(signature: inspect.Signature) -> inspect.Signature:
    """``inspect``'s signature of a bound method from its function's (``_signature_bound_method``)."""
    params = tuple(signature.parameters.values())
    if not params or params[0].kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
        raise ValueError("invalid method signature")
    if params[0].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY):
        params = params[1:]
    return signature.replace(parameters=params)


def memoized_get_signature(original: Any) -> Any:
    """``original`` (Beam's ``get_signature``) with results cached per plain function."""
    functions: weakref.WeakKeyDictionary[types.FunctionType, inspect.Signature] = weakref.WeakKeyDictionary()
    methods: weakref.WeakKeyDictionary[types.FunctionType, inspect.Signature] = weakref.WeakKeyDictionary()

    def get_signature(func: Any) -> inspect.Signature:
        kind = type(func)
        if kind is types.FunctionType:
            found = functions.get(func)
            if found is None:
                found = functions[func] = original(func)
            return found
        if kind is types.MethodType and type(func.__func__) is types.FunctionType:
            function = func.__func__
            found = methods.get(function)
            if found is None:
                try:
                    found = methods[function] = _bound(inspect.signature(function))
                except ValueError:
                    return original(func)
            return found
        return original(func)

    get_signature.__wrapped_original__ = original  # type: ignore[attr-defined]
    return get_signature


def memoized_view_as(original: Any) -> Any:
    """``PipelineOptions.view_as`` with one view per (options object, view class)."""
    views: weakref.WeakKeyDictionary[Any, dict[type, Any]] = weakref.WeakKeyDictionary()

    def view_as(self: Any, cls: type) -> Any:
        try:
            by_class = views.setdefault(self, {})
        except TypeError:  # not weak-referenceable: no cache
            return original(self, cls)
        view = by_class.get(cls)
        if view is None:
            view = by_class[cls] = original(self, cls)
        return view

    view_as.__wrapped_original__ = original  # type: ignore[attr-defined]
    return view_as


def memoized_dofn_specs(original: Any) -> Any:
    """``userstate.get_dofn_specs`` with its answer cached per DoFn object, and per DoFn shape
    (:func:`dofn_shape`) across objects (copies handed out).

    Beam asks it about the same DoFn object about eight times while applying, validating and
    serializing one ParDo; each time it wraps and inspects every method of the object. A DoFn's
    methods do not change after construction. Beam also makes new objects of the same DoFns
    (a copy per ParDo, the worker's unpickled one: 340 for the demo, 315 of them ``Map`` and
    ``FlatMap`` wrappers); objects of one shape get one answer.
    """
    cache: dict[int, tuple[weakref.ref[Any], tuple[set[Any], set[Any]]]] = {}
    by_shape: dict[Hashable, tuple[set[Any], set[Any]]] = {}

    def specs(dofn: Any) -> tuple[set[Any], set[Any]]:
        shape = dofn_shape(dofn)
        if shape is None:
            return original(dofn)
        found = by_shape.get(shape)
        if found is None:
            found = by_shape[shape] = original(dofn)
        return found

    def get_dofn_specs(dofn: Any) -> tuple[set[Any], set[Any]]:
        entry = cache.get(id(dofn))
        if entry is None or entry[0]() is not dofn:
            key = id(dofn)
            try:
                ref = weakref.ref(dofn, lambda _, key=key: cache.pop(key, None))
            except TypeError:  # not weak-referenceable: no cache
                return specs(dofn)
            entry = cache[key] = (ref, specs(dofn))
        state_specs, timer_specs = entry[1]
        return set(state_specs), set(timer_specs)

    get_dofn_specs.__wrapped_original__ = original  # type: ignore[attr-defined]
    return get_dofn_specs


def dofn_shape(dofn: Any) -> Hashable | None:
    """What ``userstate.get_dofn_specs(dofn)`` depends on, or ``None`` when that is more than
    the DoFn's class and its instance attributes that are bound methods or hide a class
    attribute.

    ``get_dofn_specs`` looks at every name of ``dir(dofn)`` whose value is a bound method and at
    that method's parameter defaults (state and timer specs). For an object whose class is
    plain (:func:`_plain_class`), such a value is either a method of its class (the same for
    every object of the class), or an instance attribute: a bound method (its defaults are its
    function's) or a value hiding a class method (then no method). So the answer is the same for
    all objects with the same class, the same names hiding class attributes and the same bound
    methods' functions, which is the shape returned."""
    cls = type(dofn)
    if not _plain_class(cls):
        return None
    try:
        attributes = vars(dofn)
    except TypeError:
        return None
    hidden, methods = [], []
    for name, value in attributes.items():
        if isinstance(value, types.MethodType):
            methods.append((name, value.__func__))
        elif hasattr(cls, name):
            hidden.append(name)
    try:
        return cls, frozenset(hidden), frozenset(methods)
    except TypeError:  # a method of an unhashable callable
        return None


#: Methods of classes written in C (``object.__repr__``, ...): they bind to built-in methods,
#: never to ``types.MethodType``, alike for every object.
_C_METHODS = (types.WrapperDescriptorType, types.MethodDescriptorType, types.ClassMethodDescriptorType)


@functools.cache
def _plain_class(cls: type) -> bool:
    """Whether every attribute of ``cls`` is the same for all its objects: no ``__getattr__``,
    ``__getattribute__`` or ``__dir__`` of its own, no slots, and no descriptors but functions,
    static and class methods, methods written in C, the instance's ``__dict__``,
    ``__weakref__`` and ``__class__``, and the properties of Beam's ``DoFn`` (which give
    booleans)."""
    from apache_beam.transforms.core import DoFn

    if cls.__getattribute__ is not object.__getattribute__ or cls.__dir__ is not object.__dir__:
        return False
    if hasattr(cls, "__getattr__"):
        return False
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if name in ("__dict__", "__weakref__", "__class__"):  # the instance's dict, weak references, type
                continue
            if isinstance(value, (types.FunctionType, staticmethod, classmethod, *_C_METHODS)):
                continue
            if isinstance(value, property) and klass is DoFn:
                continue
            if hasattr(type(value), "__get__"):
                return False
    return True


def memoized_yield_check(original: Any) -> Any:
    """``core._check_fn_use_yield_and_return`` with its answer cached per function.

    Every ``ParDo`` asks it whether its DoFn's ``process`` both yields and returns, which reads
    and tokenizes the method's source (``inspect.getsourcelines``): 175 times for the demo's
    graph, mostly for the same few methods (every ``Map`` and ``FlatMap`` shares one). The
    answer depends only on the function's source; a bound method is keyed by its function.
    """
    cache: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    def check(fn: Any) -> bool:
        function = getattr(fn, "__func__", fn)
        try:
            answer = cache.get(function)
        except TypeError:  # not weak-referenceable: no cache
            return original(fn)
        if answer is None:
            answer = cache[function] = original(fn)
        return answer

    check.__wrapped_original__ = original  # type: ignore[attr-defined]
    return check


def shorter_sampling_period() -> None:
    """Make :data:`SAMPLING_PERIOD_MS` the default sampling period of Beam's
    ``StateSampler`` (the one bundles use), if that default is still Beam's."""
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,):
        init.__defaults__ = (SAMPLING_PERIOD_MS,)


#: Runs in this process that keep Beam's pickles uncompressed (see :func:`uncompressed_payloads`).
_uncompressed_runs = 0
_uncompressed_lock = threading.Lock()
#: What a pickle of protocol 2 or later starts with (Beam's pickler writes protocol 5); a bz2
#: stream starts with ``BZh``.
_PICKLE_START = b"\x80"


class PayloadCompression:
    """What Beam's cloudpickle pickler finds as ``bz2`` once :func:`apply` ran.

    ``compress`` is bz2's, except while :func:`uncompressed_payloads` is active, when it returns
    the pickle as it is. ``decompress`` takes both: a bz2 stream (any run's, or another Beam
    process's) is decompressed by bz2, an uncompressed pickle is returned as it is. Beam's own
    ``loads`` therefore reads every payload this process can meet."""

    @staticmethod
    def compress(data: bytes, compresslevel: int = 9) -> bytes:
        if _uncompressed_runs:
            return data
        return bz2.compress(data, compresslevel)

    @staticmethod
    def decompress(data: bytes) -> bytes:
        if data[:1] == _PICKLE_START:
            return data
        return bz2.decompress(data)


def use_payload_compression() -> None:
    """Make :class:`PayloadCompression` the ``bz2`` of Beam's cloudpickle pickler (idempotent)."""
    from apache_beam.internal import cloudpickle_pickler

    if cloudpickle_pickler.bz2 is bz2:
        cloudpickle_pickler.bz2 = PayloadCompression


@contextlib.contextmanager
def uncompressed_payloads(in_process: bool) -> Iterator[None]:
    """While inside, with ``in_process`` true, Beam's pickles (DoFns, CombineFns, coders in the
    pipeline's proto and the worker's re-pickled DoFns) stay uncompressed.

    Only for a run whose workers are in this process (the FnApiRunner in memory or on threads):
    a worker started as a new process (multi-processing, portable, remote runners) decompresses
    with Beam's own ``bz2.decompress``, so for those runs ``in_process`` must be false, and a
    proto built inside must not be handed to another process. Runs on other threads of this
    process while one is inside also write uncompressed pickles; every reader in this process
    reads both."""
    if not in_process:
        yield
        return
    global _uncompressed_runs
    use_payload_compression()
    with _uncompressed_lock:
        _uncompressed_runs += 1
    try:
        yield
    finally:
        with _uncompressed_lock:
            _uncompressed_runs -= 1


def apply() -> None:
    """Install the memoizations, the shorter sampling period and :class:`PayloadCompression`
    (idempotent). Call before a pipeline is built."""
    global _applied
    if _applied:
        return
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms import core, ptransform, userstate, util
    from apache_beam.typehints import decorators

    fast = memoized_get_signature(decorators.get_signature)
    for module in (decorators, core, ptransform, util):
        if getattr(module, "get_signature", None) is not None:
            module.get_signature = fast
    PipelineOptions.view_as = memoized_view_as(PipelineOptions.view_as)
    userstate.get_dofn_specs = memoized_dofn_specs(userstate.get_dofn_specs)
    core._check_fn_use_yield_and_return = memoized_yield_check(core._check_fn_use_yield_and_return)
    shorter_sampling_period()
    use_payload_compression()
    _applied = True
