"""Phrase books: named lists of Jinja2 templates rendered in Jinja2's sandbox.

A phrase book is a YAML mapping ``slot -> [template, ...]``. Built-in books live under
``templates/`` (installed with the package); a user's file replaces the slots it defines. Files
are read when the pipeline is built, so workers receive the text, never a local path. A template
that tries to reach Python internals fails with :class:`PhrasingError` when the book is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from importlib import resources
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from transforms.sampling import keyed_hash


class PhrasingError(ValueError):
    """A phrase book that cannot be used: unreadable, malformed, or an unsafe/broken template.

    Raised by :meth:`PhraseBook.render` at run time too; steps turn it into a dead letter
    (reason ``template_error``)."""


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


def parse_book(text: str, origin: str) -> dict[str, list[str]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PhrasingError(f"{origin}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PhrasingError(f"{origin}: expected a mapping of slot -> list of templates")
    book = {}
    for slot, variants in data.items():
        if isinstance(variants, str):
            variants = [variants]
        if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
            raise PhrasingError(f"{origin}: slot {slot!r} must be a non-empty list of template strings")
        book[str(slot)] = variants
    return book


class PhraseBook:
    """Renders slot templates; the variant is a keyed hash of (seed, step id, key)."""

    def __init__(
        self,
        book: Mapping[str, list[str]],
        seed: int = 0,
        step_id: str = "",
        samples: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.book = dict(book)
        self.seed = seed
        self.step_id = step_id
        if samples is not None:
            self.check(samples)

    @cached_property
    def _compiled(self) -> dict[str, list[Any]]:
        env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        compiled: dict[str, list[Any]] = {}
        for slot, variants in self.book.items():
            try:
                compiled[slot] = [env.from_string(v) for v in variants]
            except TemplateError as exc:
                raise PhrasingError(f"slot {slot!r}: {exc}") from None
        return compiled

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled", None)  # compiled templates are rebuilt on the worker
        return state

    def slots(self) -> set[str]:
        return set(self.book)

    def render(self, slot: str, key: str, **variables: Any) -> str:
        variants = self._compiled[slot]
        index = keyed_hash(self.seed, self.step_id, f"{slot}\x1f{key}") % len(variants)
        try:
            return variants[index].render(**variables).strip()
        except SecurityError as exc:
            raise PhrasingError(f"slot {slot!r}: template refused by the sandbox: {exc}") from None
        except TemplateError as exc:
            raise PhrasingError(f"slot {slot!r}: {exc}") from None

    def check(self, samples: Mapping[str, dict[str, Any]]) -> None:
        """Render every variant of every slot with ``samples[slot]`` variables; fail early."""
        for slot, compiled in self._compiled.items():
            if slot not in samples:
                continue
            for i, template in enumerate(compiled):
                try:
                    template.render(**samples[slot])
                except SecurityError as exc:
                    raise PhrasingError(f"slot {slot!r} variant {i}: template refused by the sandbox: {exc}") from None
                except TemplateError as exc:
                    raise PhrasingError(f"slot {slot!r} variant {i}: {exc}") from None


def load_book(
    builtin: str, user_path: str | None, base_dir: str, variables: Mapping[str, Mapping[str, Any]]
) -> dict[str, list[str]]:
    """The built-in book with a user's slots laid over it, checked: every slot of ``variables``
    exists, no other slot does, and every variant renders in the sandbox with exactly the
    variables its slot gets at run time (``variables[slot]``, example values)."""
    book = parse_book(builtin_text(builtin), f"templates/{builtin}")
    if user_path:
        user = parse_book(read_text(user_path, base_dir), user_path)
        unknown = set(user) - set(variables)
        if unknown:
            raise PhrasingError(
                f"{user_path}: unknown slots {', '.join(sorted(unknown))}; known: {', '.join(sorted(variables))}"
            )
        book.update(user)
    missing = set(variables) - set(book)
    if missing:
        raise PhrasingError(f"templates lack slots: {', '.join(sorted(missing))}")
    PhraseBook(book, samples=variables)
    return book
