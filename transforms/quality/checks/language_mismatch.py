"""``language_mismatch``: a supervised answer in another language than the query it answers."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas import Sample
from transforms.base import check_regexes
from transforms.quality import language
from transforms.quality.check import SampleCheck, Verdict, preceding_query, supervised_replies
from transforms.quality.language import MIN_CONFIDENCE, MIN_LETTERS, detect_language
from transforms.react import has_markers

TRANSLATION_PATTERNS = (r"translat", r"翻译", r"翻譯", r"\bin (?:english|chinese)\b")


class LanguageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_letters: int = Field(MIN_LETTERS, ge=1)
    min_confidence: float = Field(MIN_CONFIDENCE, ge=0.0, le=1.0)
    #: Queries that ask for another language (translation) are not judged.
    exempt_patterns: list[str] = Field(
        default_factory=lambda: [r"translat", r"翻译", r"翻譯", r"\bin (?:english|chinese)\b"]
    )

    @field_validator("exempt_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return check_regexes(patterns)


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
        options: LanguageOptions = self.options  # type: ignore[assignment]
        judged = False
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
            if answered is None:
                continue
            judged = True
            if asked != answered:
                return Verdict(
                    True, f"[{asked}] {query.content[:100]} -> [{answered}] {reply.content}", f"{asked}->{answered}"
                )
        return Verdict(False) if judged else None
