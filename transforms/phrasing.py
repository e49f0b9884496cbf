"""Phrase books: named lists of Jinja2 templates rendered in Jinja2's sandbox, under limits.

A phrase book is a YAML mapping ``slot -> [template, ...]``. Built-in books live under
``templates/`` (installed with the package); a user's file replaces the slots it defines. Files
are read when the pipeline is built, so workers receive the text, never a local path. A slot
given twice in one file, a template that tries to reach Python internals, reads other files
(``include``/``import``), or goes past a limit of :mod:`transforms.template_limits` (time,
output size, loop iterations) fails with :class:`PhrasingError` naming the file and slot: when
the book is loaded (every variant is rendered once with example values of exactly the types it
gets at run time) and, for data-dependent limits, at run time.

Rendering has a fast path: a variant that is plain text or only ``{{ name }}`` substitutions
is compiled once to a ``str.format_map`` call (no Jinja context per render); its output is
byte-identical to Jinja's (``tests/test_phrasing_limits.py`` compares both paths on every shipped
book) and it keeps the output-size limit. Every other variant renders in the limited sandbox.
Variables may be :class:`Deferred`: computed only when the chosen variant uses them, and always
handed to templates as the string they compute.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Mapping
from functools import cached_property
from importlib import resources
from typing import Any

import yaml
from jinja2 import Template, TemplateError, meta, nodes
from jinja2.exceptions import SecurityError

from transforms.sampling import keyed_hash
from transforms.template_limits import MAX_OUTPUT_CHARS, LimitedSandbox, TemplateLimitError, render_limited


class PhrasingError(ValueError):
    """A phrase book that cannot be used: unreadable, malformed, or an unsafe/broken template.

    Raised by :meth:`PhraseBook.render` at run time too; steps turn it into a dead letter
    (reason ``template_error``)."""


class Deferred:
    """A template variable computed only if the chosen variant uses it (e.g. the indented JSON
    of a call's arguments); templates receive ``str(make())``."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


class Book(dict[str, list[str]]):
    """A phrase book (``slot -> variants``) that remembers the file each slot came from."""

    def __init__(self, slots: Mapping[str, list[str]] = (), origins: Mapping[str, str] | None = None) -> None:
        super().__init__(slots)
        self.origins: dict[str, str] = dict(origins or {})

    def overlay(self, other: Book | Mapping[str, list[str]]) -> Book:
        """This book with ``other``'s slots laid over it (their origins too)."""
        merged = Book(self, self.origins)
        merged.update(other)
        merged.origins.update(getattr(other, "origins", {}))
        return merged

    def __or__(self, other: Mapping[str, list[str]]) -> Book:  # type: ignore[override]
        return self.overlay(other)


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice (lines {seen[key]} and {line})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def builtin_text(relative: str) -> str:
    """Text of a built-in file under ``templates/`` (e.g. ``align/default.yaml``)."""
    return resources.files("templates").joinpath(relative).read_text(encoding="utf-8")


def read_text(path: str, base_dir: str) -> str:
    """A user's file, relative paths starting at ``base_dir`` (the spec's folder)."""
    full = path if os.path.isabs(path) else os.path.join(base_dir, path)
    try:
        with open(full, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise PhrasingError(f"cannot read templates {full!r}: {exc.strerror}") from None


def parse_book(text: str, origin: str) -> Book:
    """The slots of one phrase-book file; a slot given twice is an error (``origin`` names the file)."""
    try:
        data = load_yaml_unique(text)
    except yaml.YAMLError as exc:
        raise PhrasingError(f"{origin}: invalid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise PhrasingError(f"{origin}: expected a mapping of slot -> list of templates")
    book = {}
    for slot, variants in data.items():
        if isinstance(variants, str):
            variants = [variants]
        if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
            raise PhrasingError(f"{origin}: slot {slot!r} must be a non-empty list of template strings")
        book[str(slot)] = variants
    return Book(book, dict.fromkeys(book, origin))


#: Value types whose ``format(value, "")`` is ``str(value)`` (others take the sandbox path).
_PLAIN = (str, int, float, bool)


class _Variant:
    """One compiled variant: a ``str.format_map`` pattern when it is plain text and ``{{ name }}``
    substitutions only (the fast path), else a template of the limited sandbox. A fast variant's
    Jinja template is compiled only if it is needed (an undefined name: Jinja gives the error);
    text and names cannot fail to compile."""

    __slots__ = ("_template", "env", "names", "pattern", "tree")

    def __init__(self, env: LimitedSandbox, tree: nodes.Template, fast: bool) -> None:
        self.env = env
        self.tree = tree
        self.names = frozenset(meta.find_undeclared_variables(tree))
        self.pattern = _format_pattern(tree) if fast else None
        self._template: Template | None = None if self.pattern is not None else env.from_string(tree)

    @property
    def template(self) -> Template:
        if self._template is None:
            self._template = self.env.from_string(self.tree)
        return self._template


_ENVIRONMENT: list[LimitedSandbox] = []
_CACHE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _compile(source: str, fast: bool) -> _Variant:
    """One variant compiled, once per process and source: every step and every bundle that
    uses the same wording shares it (compiled templates are immutable; the render limits are
    per thread)."""
    with _CACHE_LOCK:
        if not _ENVIRONMENT:
            _ENVIRONMENT.append(LimitedSandbox())
    env = _ENVIRONMENT[0]
    return _Variant(env, env.checked_tree(source), fast)


def _format_pattern(tree: nodes.Template) -> str | None:
    """The variant as a ``str.format_map`` pattern, or None when it is more than text and names.
    Jinja writes text as is and a name as ``str(value)``; ``format_map`` writes ``format(value,
    '')``, which is ``str(value)`` for the strings and numbers phrase books get."""
    parts = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(child.data.replace("{", "{{").replace("}", "}}"))
            elif isinstance(child, nodes.Name) and child.ctx == "load" and child.name.isidentifier():
                parts.append("{" + child.name + "}")
            else:
                return None
    return "".join(parts)


class PhraseBook:
    """Renders slot templates; the variant is a keyed hash of (seed, step id, key).

    ``fast=False`` renders every variant in the sandbox (the reference the fast path is tested
    against). Errors name the slot's file (``book.origins``), the slot and the variant."""

    def __init__(
        self,
        book: Mapping[str, list[str]],
        seed: int = 0,
        step_id: str = "",
        samples: Mapping[str, dict[str, Any]] | None = None,
        fast: bool = True,
    ) -> None:
        self.book = dict(book)
        self.origins: dict[str, str] = dict(getattr(book, "origins", {}))
        self.seed = seed
        self.step_id = step_id
        self.fast = fast
        if samples is not None:
            self.check(samples)

    def _where(self, slot: str, index: int | None = None) -> str:
        origin = self.origins.get(slot)
        where = f"slot {slot!r}" if index is None else f"slot {slot!r} variant {index}"
        return f"{origin}: {where}" if origin else where

    @cached_property
    def _compiled(self) -> dict[str, list[_Variant]]:
        compiled: dict[str, list[_Variant]] = {}
        for slot, variants in self.book.items():
            compiled[slot] = []
            for index, source in enumerate(variants):
                try:
                    compiled[slot].append(_compile(source, self.fast))
                except TemplateError as exc:
                    raise PhrasingError(f"{self._where(slot, index)}: {exc}") from None
        return compiled

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled", None)  # compiled templates are rebuilt on the worker
        return state

    def slots(self) -> set[str]:
        return set(self.book)

    def languages(self) -> set[str]:
        """Languages with wording of their own for some slot (``<language>.<slot>`` slots)."""
        return {split[0] for split in map(language_slot, self.book) if split is not None}

    def render(self, slot: str, key: str, in_language: str | None = None, **variables: Any) -> str:
        """The chosen variant of ``slot`` rendered with ``variables``, stripped. With
        ``in_language``, the book's ``<in_language>.<slot>`` variants are used when it has them
        (else ``slot``'s); the choice is the same keyed hash of ``slot`` and ``key`` either way."""
        compiled = self._compiled
        name = f"{in_language}.{slot}" if in_language is not None and f"{in_language}.{slot}" in compiled else slot
        variants = compiled[name]
        index = keyed_hash(self.seed, self.step_id, f"{slot}\x1f{key}") % len(variants)
        return self._render(name, index, variants[index], variables)

    def _render(self, slot: str, index: int, variant: _Variant, variables: Mapping[str, Any]) -> str:
        values = {
            name: str(value.make()) if isinstance(value, Deferred) else value
            for name, value in variables.items()
            if name in variant.names
        }
        try:
            if variant.pattern is not None and all(type(v) in _PLAIN for v in values.values()):
                try:
                    text = variant.pattern.format_map(values)
                except KeyError:
                    text = None  # an undefined name: the sandbox gives Jinja's own error
                if text is not None:
                    if len(text) > MAX_OUTPUT_CHARS:
                        raise TemplateLimitError(f"output is over the limit of {MAX_OUTPUT_CHARS:,} characters")
                    return text.strip()
            return render_limited(variant.template, values).strip()
        except TemplateLimitError as exc:
            raise PhrasingError(f"{self._where(slot, index)}: template over a limit: {exc}") from None
        except SecurityError as exc:
            raise PhrasingError(f"{self._where(slot, index)}: template refused by the sandbox: {exc}") from None
        except TemplateError as exc:
            raise PhrasingError(f"{self._where(slot, index)}: {exc}") from None
        except RecursionError:
            raise PhrasingError(f"{self._where(slot, index)}: template recursion too deep") from None
        except (ArithmeticError, LookupError, TypeError, ValueError, MemoryError) as exc:
            raise PhrasingError(f"{self._where(slot, index)}: {type(exc).__name__}: {exc}") from None

    def check(self, samples: Mapping[str, dict[str, Any]]) -> None:
        """Render every variant of every slot with ``samples[slot]`` variables; fail early."""
        for slot, compiled in self._compiled.items():
            if slot not in samples:
                continue
            for index, variant in enumerate(compiled):
                self._render(slot, index, variant, samples[slot])


#: A slot worded for one language: ``zh.tool`` is slot ``tool`` in Chinese (ISO 639-1 code).
_LANGUAGE_SLOT = re.compile(r"([a-z]{2,3})\.(.+)")


def language_slot(slot: str) -> tuple[str, str] | None:
    """``(language, slot)`` of a language slot such as ``zh.tool``, else None."""
    match = _LANGUAGE_SLOT.fullmatch(slot)
    return (match.group(1), match.group(2)) if match else None


def load_book(
    builtin: str,
    user_path: str | None,
    base_dir: str,
    variables: Mapping[str, Mapping[str, Any]],
    languages: bool = False,
) -> Book:
    """The built-in book with a user's slots laid over it, checked: every slot of ``variables``
    exists, no other slot does, and every variant renders in the sandbox with exactly the
    variables its slot gets at run time (``variables[slot]``, example values). With
    ``languages``, a ``<language>.<slot>`` slot (``zh.tool``) of a known slot is known too and
    gets that slot's variables; a language need not word every slot."""
    book = parse_book(builtin_text(builtin), f"templates/{builtin}")
    user = parse_book(read_text(user_path, base_dir), user_path) if user_path else Book()
    book = book.overlay(user)
    known = dict(variables)
    if languages:
        for slot in book:
            split = language_slot(slot)
            if split is not None and split[1] in variables:
                known[slot] = variables[split[1]]
    unknown = set(user) - set(known)
    if unknown:
        described = ", ".join(sorted(variables)) + (" (each also as <language>.<slot>)" if languages else "")
        raise PhrasingError(f"{user_path}: unknown slots {', '.join(sorted(unknown))}; known: {described}")
    missing = set(variables) - set(book)
    if missing:
        raise PhrasingError(f"templates lack slots: {', '.join(sorted(missing))}")
    PhraseBook(book, samples=known)
    return book
