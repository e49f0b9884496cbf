"""JSON text of tool-call arguments, fast.

``json.dumps(value, indent=2)`` runs the standard library's pure-Python encoder (the C encoder
has no indentation). :func:`dumps_indented` writes the same bytes from a small recursive
function that hands every string to the C string encoder, several times faster for the small
objects of tool calls. Values it does not know (anything but dict, list, tuple, str, int, float,
bool and None), non-string keys and very deep nesting go to ``json.dumps`` itself, so
its output and its errors are always ``json.dumps``'s.
"""

from __future__ import annotations

import json
from typing import Any

try:
    from _json import encode_basestring as _encode_string  # the C encoder json.dumps uses
except ImportError:  # pragma: no cover - CPython always has it
    from json.encoder import py_encode_basestring as _encode_string

#: Nesting depth from which :func:`dumps_indented` defers to ``json.dumps``.
MAX_DEPTH = 100
_FLOAT_REPR = float.__repr__
_INT_REPR = int.__repr__


class _Unsupported(Exception):
    pass


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value == float("inf"):
        return "Infinity"
    if value == -float("inf"):
        return "-Infinity"
    return _FLOAT_REPR(value)


def _write(value: Any, indent: str, depth: int, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        out.append(_INT_REPR(value))
    elif kind is float:
        out.append(_float(value))
    elif depth >= MAX_DEPTH:
        raise _Unsupported
    elif kind is dict:
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        out.append("{")
        first = True
        for key, item in value.items():
            if type(key) is not str:
                raise _Unsupported
            out.append("\n" + inner if first else ",\n" + inner)
            first = False
            out.append(_encode_string(key))
            out.append(": ")
            _write(item, inner, depth + 1, out)
        out.append("\n" + indent + "}")
    elif kind is list or kind is tuple:
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[")
        first = True
        for item in value:
            out.append("\n" + inner if first else ",\n" + inner)
            first = False
            _write(item, inner, depth + 1, out)
        out.append("\n" + indent + "]")
    else:
        raise _Unsupported


def dumps_indented(value: Any) -> str:
    """Exactly ``json.dumps(value, ensure_ascii=False, indent=2)``."""
    out: list[str] = []
    try:
        _write(value, "", 0, out)
    except _Unsupported:
        return json.dumps(value, ensure_ascii=False, indent=2)
    return "".join(out)
