"""``language_mismatch``: a supervised answer in another language than the query it answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas import Message, Sample
from transforms.base import check_regexes
from transforms.quality import language
from transforms.quality.check import SampleCheck, Verdict, preceding_query, supervised_replies
from transforms.quality.language import MIN_CONFIDENCE, MIN_LETTERS, detect_language
from transforms.react import has_markers

#: Queries that ask for another language (a translation) are not judged.
TRANSLATION_PATTERNS = (r"translat", r"翻译", r"翻譯", r"\bin (?:english|chinese)\b")


class LanguageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_letters: int = Field(MIN_LETTERS, ge=1)
    min_confidence: float = Field(MIN_CONFIDENCE, ge=0.0, le=1.0)
    #: Queries that ask for another language (translation) are not judged.
    exempt_patterns: list[str] = Field(default_factory=lambda: list(TRANSLATION_PATTERNS))

    @field_validator("exempt_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return check_regexes(patterns)


class JudgedReply(NamedTuple):
    """A supervised reply whose language and whose query's language could both be told."""

    index: int
    query: Message
    asked: str
    answered: str

    @property
    def mismatched(self) -> bool:
        return self.asked != self.answered


def judged_replies(sample: Sample, options: LanguageOptions) -> Iterator[JudgedReply]:
    """The sample's supervised replies that can be judged, in order (lazily: a caller may stop at
    the first mismatch). Replies with ReAct markers or tool calls, replies without a query, and
    replies to a query that asks for a translation are skipped, as are texts whose language
    cannot be told."""
    asked_of: dict[int, str | None] = {}
    for index, reply in supervised_replies(sample):
        if has_markers(reply.content):
            continue
        query = preceding_query(sample, index)
        if query is None:
            continue
        if any(re.search(p, query.content, re.IGNORECASE) for p in options.exempt_patterns):
            continue
        if id(query) not in asked_of:
            asked_of[id(query)] = detect_language(query.content, options.min_letters, options.min_confidence)
        asked = asked_of[id(query)]
        if asked is None:
            continue
        answered = detect_language(reply.content, options.min_letters, options.min_confidence)
        if answered is not None:
            yield JudgedReply(index, query, asked, answered)


class LanguageMismatch(SampleCheck):
    name = "language_mismatch"
    definition = (
        "Share of samples, among those with a supervised reply whose language and whose query's "
        "language can both be told (py3langid, offline; CJK by script), where a reply's language "
        "differs from the language of the user message it answers. Replies with ReAct markers or "
        "tool calls, and queries that ask for a translation, are not judged."
    )
    threshold = 0.0
    severity = "warn"
    Options = LanguageOptions

    def setup(self) -> None:
        detect_language("warm up the model once per worker, before the first sample")

    def prefetch(self) -> None:
        language.prefetch()

    def inspect(self, sample: Sample) -> Verdict | None:
        judged = False
        for reply in judged_replies(sample, self.options):  # type: ignore[arg-type]
            judged = True
            if reply.mismatched:
                text = sample.messages[reply.index].content
                return Verdict(
                    True,
                    f"[{reply.asked}] {reply.query.content[:100]} -> [{reply.answered}] {text}",
                    f"{reply.asked}->{reply.answered}",
                )
        return Verdict(False) if judged else None
