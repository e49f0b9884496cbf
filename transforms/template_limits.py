"""Jinja2's sandbox with resource limits, for the user-editable templates of phrase books.

Jinja2's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` keeps a template away from
Python internals; it does not bound what a template costs. :class:`LimitedSandbox` adds, per
render (see :func:`render_limited`):

* a time limit (:data:`MAX_SECONDS`), checked at every loop iteration, call, attribute or item
  access and output chunk;
* an output-size limit (:data:`MAX_OUTPUT_CHARS`), checked while the output streams out of
  ``Template.generate``, so a template never builds an unbounded string first;
* a loop budget (:data:`MAX_ITERATIONS` iterations of all ``for`` loops together, nested or
  not); ``range`` refuses more items than the budget;
* no amplification in one operation: ``*`` and ``**`` on big operands, a width or count above
  the output limit given to a padding method or filter (``center(10**9)``, ``'x'.ljust(...)``,
  ``indent``, ``wordwrap``, ``batch``, ``slice``), a format width above it, ``replace`` that
  would grow past it, a ``namespace`` attribute, macro or call argument longer than it;
* no ``lipsum`` (it writes random text: calling it is an error) and no ``random`` filter (the
  output must be deterministic);
* no ``{% include %}``, ``{% import %}``, ``{% from %}`` or ``{% extends %}`` (a phrase-book
  template cannot read other files) and no macro that calls itself.

A limit that is hit raises :class:`TemplateLimitError` (a :class:`jinja2.TemplateError`); the
phrase book turns it into an error naming the file and slot.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

#: Longest output of one render, in characters.
MAX_OUTPUT_CHARS = 1_000_000
#: Longest time one render may take, in seconds.
MAX_SECONDS = 2.0
#: Most loop iterations of one render (all ``for`` loops together).
MAX_ITERATIONS = 100_000
#: Filters that are not available to phrase-book templates (non-deterministic output).
REMOVED_FILTERS = frozenset({"random"})
#: Tags a phrase-book template may not use: they read other templates.
REFUSED_TAGS = {
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
}
_WIDTH = re.compile(r"[%:<>^=][-+ #0]*(\d{7,})")


class TemplateLimitError(SecurityError):
    """A template went past a limit of :class:`LimitedSandbox` (time, size, loops, a tag)."""


class _Budget:
    __slots__ = ("deadline", "iterations")

    def __init__(self, seconds: float, iterations: int) -> None:
        self.deadline = time.monotonic() + seconds
        self.iterations = iterations


_state = threading.local()


def _tick() -> None:
    budget: _Budget | None = getattr(_state, "budget", None)
    if budget is not None and time.monotonic() > budget.deadline:
        raise TemplateLimitError(f"rendering took longer than the limit of {MAX_SECONDS:g} s")


def _check_size(value: Any, what: str) -> None:
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > MAX_OUTPUT_CHARS:
        raise TemplateLimitError(f"{what} has {len(value):,} items, over the limit of {MAX_OUTPUT_CHARS:,}")


#: Methods and filters whose integer arguments are sizes of their output (a width, a count).
SIZE_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "__mul__", "__rmul__"})
SIZE_FILTERS = frozenset({"do_center", "do_indent", "do_wordwrap", "do_batch", "do_slice"})


def _check_argument(value: Any, sizes: bool) -> None:
    if sizes and isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT_CHARS:
        raise TemplateLimitError(f"a size of {value} is over the limit of {MAX_OUTPUT_CHARS:,}")
    _check_size(value, "an argument")


def _check_format(text: str) -> None:
    """A format string (``%`` or ``str.format``) must not ask for a width above the limit."""
    for match in _WIDTH.finditer(text):
        if int(match.group(1)) > MAX_OUTPUT_CHARS:
            raise TemplateLimitError(f"a format width of {match.group(1)} is over the limit of {MAX_OUTPUT_CHARS:,}")


def _check_arguments(args: Iterable[Any], kwargs: Mapping[str, Any], sizes: bool) -> None:
    """No argument over the output limit in length, nor, when the integers are ``sizes`` of
    the output (a width, a count), in value."""
    for value in args:
        _check_argument(value, sizes)
    for value in kwargs.values():
        _check_argument(value, sizes)


def _bounded(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps the iterable of every ``for`` loop: counts iterations against the render's budget."""
    budget: _Budget | None = getattr(_state, "budget", None)
    for item in iterable:
        if budget is not None:
            budget.iterations -= 1
            if budget.iterations < 0:
                raise TemplateLimitError(f"loops ran more than the limit of {MAX_ITERATIONS:,} iterations")
            if time.monotonic() > budget.deadline:
                raise TemplateLimitError(f"rendering took longer than the limit of {MAX_SECONDS:g} s")
        yield item


def _range(*args: int) -> range:
    items = range(*args)
    if len(items) > MAX_ITERATIONS:
        raise TemplateLimitError(f"range of {len(items):,} items is over the limit of {MAX_ITERATIONS:,}")
    return items


def _no_lipsum(*args: Any, **kwargs: Any) -> str:
    raise TemplateLimitError("lipsum is not available in phrase books (its text is random)")


class _LimitedNamespace(Namespace):
    """``namespace()`` whose attributes cannot grow past the output limit."""

    def __setitem__(self, name: str, value: Any) -> None:
        _tick()
        _check_size(value, f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _guard_filter(function: Any) -> Any:
    # the value filtered comes first, after the context or environment for pass_* filters
    skip = 2 if hasattr(function, "jinja_pass_arg") else 1
    sizes = function.__name__ in SIZE_FILTERS

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_arguments(args[skip:], kwargs, sizes)
        value = args[skip - 1] if len(args) >= skip else None
        if function.__name__ == "do_format" and isinstance(value, str):
            _check_format(value)
        if function.__name__ == "do_replace" and _replace_grows_too_much(value, args[skip:]):
            raise TemplateLimitError(f"replace would make a text over the limit of {MAX_OUTPUT_CHARS:,}")
        result = function(*args, **kwargs)
        _check_size(result, "a filter's result")
        return result

    return guarded


def _replace_grows_too_much(obj: Any, args: tuple[Any, ...]) -> bool:
    if not isinstance(obj, str) or len(args) < 2 or not all(isinstance(a, str) for a in args[:2]):
        return False
    old, new = args[0], args[1]
    count = len(obj) + 1 if old == "" else obj.count(old)
    return len(obj) + count * max(0, len(new) - len(old)) > MAX_OUTPUT_CHARS


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The phrase-book environment: immutable sandbox, strict undefined, limits (module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.globals["lipsum"] = _no_lipsum
        self.globals["range"] = _range
        self.globals["namespace"] = _LimitedNamespace
        self.filters = {
            name: _guard_filter(function) for name, function in self.filters.items() if name not in REMOVED_FILTERS
        }
        self.loop_limit = _bounded  # reached by the rewritten ``for`` loops as environment.loop_limit

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(times, int)
                    and len(seq) * times > MAX_OUTPUT_CHARS
                ):
                    raise TemplateLimitError(
                        f"repeating {len(seq):,} items {times:,} times is over the limit of {MAX_OUTPUT_CHARS:,}"
                    )
        elif operator == "**":
            if isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1 and right > 64:
                raise TemplateLimitError(f"power with exponent {right} is over the limit of 64")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        name, owner = getattr(__obj, "__name__", None), getattr(__obj, "__self__", None)
        if __obj is not _range:  # range checks its own length
            sizes = name in SIZE_METHODS and isinstance(owner, (str, bytes, list, tuple))
            _check_arguments(args, kwargs, sizes)
        if name in ("format", "format_map") and isinstance(owner, str):
            _check_format(owner)
        if name == "replace" and _replace_grows_too_much(owner, args):
            raise TemplateLimitError(f"replace would make a text over the limit of {MAX_OUTPUT_CHARS:,}")
        result = super().call(__context, __obj, *args, **kwargs)
        _check_size(result, "a call's result")
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def template(self, source: str) -> tuple[Template, nodes.Template]:
        """Compile ``source`` with its ``for`` loops bounded; refused tags and recursive macros
        raise :class:`TemplateLimitError`. Returns the template and its (rewritten) syntax tree."""
        tree = self.checked_tree(source)
        return self.from_string(tree), tree

    def checked_tree(self, source: str) -> nodes.Template:
        """The syntax tree of ``source`` with its ``for`` loops bounded, ready for
        ``from_string``; refused tags and recursive macros raise :class:`TemplateLimitError`."""
        tree = self.parse(source)
        for node_type, tag in REFUSED_TAGS.items():
            if tree.find(node_type) is not None:
                raise TemplateLimitError(f"{tag} is not allowed here: a phrase-book template cannot read other files")
        for macro in tree.find_all(nodes.Macro):
            for call in macro.find_all(nodes.Call):
                if isinstance(call.node, nodes.Name) and call.node.name == macro.name:
                    raise TemplateLimitError(f"macro {macro.name!r} calls itself; recursive macros are not allowed")
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("loop_limit"), [loop.iter], [], None, None)
        return tree


def render_limited(template: Template, variables: Mapping[str, Any]) -> str:
    """Render ``template`` (from :meth:`LimitedSandbox.template`) under the limits; the output is
    exactly ``template.render(**variables)``'s. Raises :class:`TemplateLimitError` when a limit
    is hit, RecursionError for macros that recurse through each other, other errors as Jinja does."""
    previous = getattr(_state, "budget", None)
    _state.budget = _Budget(MAX_SECONDS, MAX_ITERATIONS)
    try:
        chunks = []
        size = 0
        for chunk in template.generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateLimitError(f"output is over the limit of {MAX_OUTPUT_CHARS:,} characters")
            _tick()
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _state.budget = previous
