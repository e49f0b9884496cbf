"""``Rejected``: a record a step did not pass on, with the reason. Written under ``rejected/``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

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


def clip(text: str, limit: int = PAYLOAD_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, with a note of how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"
