"""``prompt_copy``: supervised text whose content is copied from its own prompt."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Sequence
from itertools import filterfalse, islice

from pydantic import BaseModel, ConfigDict, Field

from schemas import Role, Sample
from transforms.quality.check import SampleCheck, Verdict

#: Format words that say nothing about content (ReAct markers, JSON keys of calls).
FORMAT_WORDS = {"thought", "think", "action", "act", "input", "final", "answer", "name", "arguments", "observation"}


#: ASCII punctuation to spaces: with ``str.split`` the words of ``\w+`` at C speed.
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation if c != "_"})
#: The same table for ``bytes.translate``, several times faster on ASCII text (most of it).
_ASCII_PUNCTUATION = bytes(ord(" ") if chr(c) in string.punctuation and c != ord("_") else c for c in range(256))
#: JSON object keys (``"query":``): the shape of a call, not its content.
_JSON_KEY = re.compile(r'"[^"\n]{1,40}"\s*:')


def content_words(text: str) -> list[str]:
    """The words of ``text``, lower-cased, without JSON keys and format words."""
    if '"' in text:  # a JSON key starts with one
        text = _JSON_KEY.sub(" ", text)
    lowered = text.lower()
    if lowered.isascii():
        words = lowered.encode("ascii").translate(_ASCII_PUNCTUATION).decode("ascii").split()
    else:
        words = lowered.translate(_PUNCTUATION).split()
    if FORMAT_WORDS.isdisjoint(words):
        return words
    return list(filterfalse(FORMAT_WORDS.__contains__, words))


def ngrams(words: Sequence[str | None], n: int) -> Iterator[tuple[str | None, ...]]:
    """Every run of ``n`` consecutive ``words``, as tuples (built at C speed by ``zip``)."""
    return zip(*(islice(words, i, None) for i in range(n)), strict=False)


def content_grams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word ``n``-grams of ``text`` without JSON keys and format words."""
    return set(ngrams(content_words(text), n))


class PromptCopyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(4, ge=1)
    min_copied: float = Field(0.7, gt=0.0, le=1.0)
    min_grams: int = Field(5, ge=1)


class PromptCopy(SampleCheck):
    name = "prompt_copy"
    definition = (
        "Share of samples whose supervised assistant text (format words left out) has at least "
        "min_copied (0.7) of its word 4-grams in the sample's own unsupervised text (system, user, "
        "tool turns and unsupervised assistant turns): transcription, not a task. Samples with "
        "fewer than min_grams target 4-grams are not judged."
    )
    threshold = 0.05
    severity = "warn"
    Options = PromptCopyOptions

    def inspect(self, sample: Sample) -> Verdict | None:
        options: PromptCopyOptions = self.options  # type: ignore[assignment]
        target: set[tuple[str, ...]] = set()
        for message in sample.messages:
            if message.role is Role.ASSISTANT and message.loss:
                target |= content_grams(message.content, options.n)
        if len(target) < options.min_grams:
            return None
        # The prompt's words, message after message, each message's followed by ``None``: an
        # n-gram across two messages holds a ``None``, so it matches no target n-gram.
        prompt: list[str | None] = []
        for message in sample.messages:
            if not (message.role is Role.ASSISTANT and message.loss):
                prompt += content_words(message.content)
                prompt.append(None)
        found = target.intersection(ngrams(prompt, options.n))
        copied = len(found) / len(target)
        if copied >= options.min_copied:
            excerpt = next((m.content for m in sample.messages if m.role is Role.ASSISTANT and m.loss), "")
            return Verdict(True, f"{copied:.0%} of target 4-grams in the prompt: {excerpt}", "copied")
        return Verdict(False)
