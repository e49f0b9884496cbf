"""Step types by name: built-ins, dotted paths (``pkg.module:Class``) and entry points.

Built-ins are found, not listed: every ``transforms`` module that defines a Step subclass with a
``type_name`` provides that name. A module of a user's package is referenced by dotted path, or
registered under the ``agentmill.transforms`` entry-point group.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import re
from importlib.metadata import entry_points

import transforms
from transforms.base import Step

ENTRY_POINT_GROUP = "agentmill.transforms"


_CLASS = re.compile(r"^class (\w+)\b", re.M)
_TYPE_NAME = re.compile(r"^    type_name(?:\s*:\s*[^=\n]+)?\s*=\s*([\"'])([^\"'\n]+)\1\s*(?:#.*)?$", re.M)


@functools.cache
def builtin_steps() -> dict[str, str]:
    """Name -> ``module:Class`` of every built-in step in the ``transforms`` package.

    Found by reading the modules' source (a top-level class whose body assigns a string literal
    to ``type_name``), so listing the steps imports none of them and parses none of them (a
    line scan: ``validate`` runs this on every call); a spec imports only the steps it uses.
    """
    found: dict[str, str] = {}
    for module_info in sorted(pkgutil.iter_modules(transforms.__path__), key=lambda m: m.name):
        if module_info.ispkg:
            continue
        path = os.path.join(transforms.__path__[0], f"{module_info.name}.py")
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        classes = [(m.start(), m.group(1)) for m in _CLASS.finditer(source)]
        for match in _TYPE_NAME.finditer(source):
            owner = [name for start, name in classes if start < match.start()]
            if not owner:
                continue
            name = match.group(2)
            if name in found:
                raise RuntimeError(f"two built-in steps are named {name!r}")
            found[name] = f"transforms.{module_info.name}:{owner[-1]}"
    return found


class UnknownStepType(LookupError):
    pass


def _load(target: str) -> type:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UnknownStepType(f"{target!r} is not of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownStepType(f"cannot import {module_name!r}: {exc}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UnknownStepType(f"module {module_name!r} has no {attr!r}") from None
    return obj


def available_steps() -> dict[str, str]:
    """Name -> target of every step type known by name (built-ins first, then entry points)."""
    known = dict(builtin_steps())
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        known.setdefault(ep.name, ep.value)
    return known


def resolve_step_type(name: str) -> type[Step]:
    """The Step class for a spec ``type``; raises :class:`UnknownStepType` with the known names."""
    if ":" in name:
        cls = _load(name)
    else:
        target = builtin_steps().get(name)  # built-ins come first: no need to read entry points
        if target is None:
            known = available_steps()
            if name not in known:
                raise UnknownStepType(
                    f"unknown step type {name!r}; known: {', '.join(sorted(known))}, or 'package.module:Class'"
                )
            target = known[name]
        cls = _load(target)
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        raise UnknownStepType(f"{name!r} is not a transforms.base.Step subclass")
    return cls
