"""``Rejected``: a record a step did not pass on, with the reason. Written under ``rejected/``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

Disposition = Literal["filtered", "dead_letter"]
PAYLOAD_LIMIT = 20_000


class Rejected(BaseModel):
    """A filtered record (a deliberate drop) or a dead letter (a record that could not be used).

    ``reason`` is a short stable category counted in the ledger; ``detail`` says what exactly was
    wrong; ``location`` is ``file:line N`` / ``file:row N`` for readers; ``payload`` is the record
    (or the raw text) cut to ``PAYLOAD_LIMIT`` characters.
    """

    model_config = ConfigDict(extra="forbid")

    step: str
    disposition: Disposition
    reason: str
    detail: str = ""
    record_id: str | None = None
    location: str | None = None
    payload: str = ""

    @field_validator("step", "reason", "detail", "record_id", "location", "payload")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        """Lone surrogates (from a ``\\ud800`` escape in the input) spelled as escapes, so the
        dead letter of a record that holds one can itself be written."""
        return None if value is None else utf8_safe(value)


def clip(text: str, limit: int = PAYLOAD_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with a note of how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def utf8_safe(text: str) -> str:
    """``text`` with each lone surrogate written as its ``\\udXXX`` escape (valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
