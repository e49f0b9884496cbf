"""Identity claims: supervised text in which an assistant says it is another model or was made
by another organisation ("I am Vicuna, trained by researchers from LMSYS").

The patterns are data (``templates/quality/identity.yaml``): named regexes in which ``{models}``
and ``{makers}`` expand to the listed alternations and ``{name}`` to the file's ``fragments``
entry ``name``. A config may add patterns or replace them.
Matching is case-insensitive. Guarantee: :meth:`IdentityPatterns.find` returns the name of every
pattern that matches, in the order the patterns are listed, and is a pure function of the text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import yaml

BUILTIN = "quality/identity.yaml"
#: Maker names the Chinese patterns spell out beyond the ``makers`` list.
SCREEN_EXTRA = ("清华大学", "智谱", "阿里巴巴", "阿里云", "百度")


def _expand(pattern: str, models: list[str], makers: list[str], fragments: dict[str, str] | None = None) -> str:
    for name, fragment in (fragments or {}).items():
        pattern = pattern.replace("{" + name + "}", str(fragment).strip())
    return pattern.replace("{models}", "|".join(models)).replace("{makers}", "|".join(makers))


@dataclass(frozen=True)
class IdentityPatterns:
    """Named, compiled identity-claim patterns."""

    names: tuple[str, ...]
    sources: tuple[str, ...]
    #: Lowercase words of which every match of every pattern contains one (empty: no shortcut); a
    #: text without any is matched by no pattern, so a few substring scans settle most texts.
    screen: tuple[str, ...] = ()

    @functools.cached_property
    def _compiled(self) -> list[re.Pattern[str]]:
        return [re.compile(source, re.IGNORECASE) for source in self.sources]

    def _screened_out(self, text: str) -> bool:
        if not self.screen:
            return False
        lowered = text.lower()
        return not any(word in lowered for word in self.screen)

    def find(self, text: str) -> list[str]:
        """Names of the patterns that match ``text``."""
        if self._screened_out(text):
            return []
        return [name for name, pattern in zip(self.names, self._compiled, strict=True) if pattern.search(text)]

    def first_match(self, text: str) -> tuple[str, str] | None:
        """``(pattern name, matched text)`` of the first matching pattern, else ``None``."""
        if self._screened_out(text):
            return None
        for name, pattern in zip(self.names, self._compiled, strict=True):
            found = pattern.search(text)
            if found:
                return name, found.group(0)
        return None


@functools.cache
def _builtin_data() -> dict:
    from transforms.phrasing import builtin_text

    return yaml.safe_load(builtin_text(BUILTIN))


def identity_patterns(extra: dict[str, str] | None = None, replace: bool = False) -> IdentityPatterns:
    """The built-in patterns plus ``extra`` (or only ``extra`` with ``replace``), compiled.

    ``extra`` patterns may use ``{models}``, ``{makers}`` and the fragments too. Raises ``ValueError`` naming a
    pattern that does not compile.
    """
    data = _builtin_data()
    models, makers = list(data["models"]), list(data["makers"])
    fragments = dict(data.get("fragments") or {})
    patterns = {} if replace else dict(data["patterns"])
    patterns.update(extra or {})
    if not patterns:
        raise ValueError("no identity patterns: give at least one")
    names, sources = [], []
    for name, pattern in patterns.items():
        source = _expand(str(pattern).strip(), models, makers, fragments)
        try:
            re.compile(source, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"identity pattern {name!r} does not compile: {exc}") from None
        names.append(str(name))
        sources.append(source)
    # The built-in patterns all name a model or a maker: a scan for their names settles most texts.
    screen = () if extra or replace else literal_heads([*models, *makers, *SCREEN_EXTRA])
    return IdentityPatterns(tuple(names), tuple(sources), screen)


def literal_heads(alternatives: list[str]) -> tuple[str, ...]:
    """The literal start of each regex alternative, lowercased ("GPT-?4o?" -> "gpt"); empty when
    one has no literal start of 3 characters or more (then no screen is safe)."""
    heads = []
    for alternative in alternatives:
        head = re.match(r"[^\\()\[\]?*+{}|.^$-]*", alternative)
        literal = head.group(0).strip().lower() if head else ""
        if len(literal) < 3 and not re.search(r"[\u4e00-\u9fff]", literal):
            return ()
        heads.append(literal)
    return tuple(sorted(set(heads)))
