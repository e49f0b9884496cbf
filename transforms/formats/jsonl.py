"""Any JSON record, through a field mapping (format ``jsonl``).

Either a message list (``messages`` path, with ``role`` / ``content`` / ``loss`` keys inside each
message) or a single turn built from fields (``prompt`` fields joined by a blank line, e.g.
alpaca's instruction and input, and a ``response`` field). Paths may be dotted (``meta.text``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import Role, Trajectory, Turn
from transforms.base import RecordError
from transforms.formats.common import (
    ParseContext,
    build_trajectory,
    get_path,
    require_text,
    require_turn,
    resolve_loss,
    resolve_role,
)


class FieldMapping(BaseModel):
    """Where the conversation lives in a record."""

    model_config = ConfigDict(extra="forbid")

    messages: str | None = None
    role: str = "role"
    content: str = "content"
    loss: str | None = "loss"
    prompt: list[str] = Field(default_factory=list)
    response: str | None = None
    system: str | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> FieldMapping:
        if bool(self.messages) == bool(self.prompt or self.response):
            raise ValueError("give either 'messages' or 'prompt' + 'response'")
        if not self.messages and not (self.prompt and self.response):
            raise ValueError("single-turn mapping needs both 'prompt' and 'response'")
        return self


def parse(obj: Any, ctx: ParseContext, mapping: FieldMapping) -> Trajectory:
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    turns: list[Turn] = []
    consumed: set[str] = set()
    if mapping.system:
        system = get_path(obj, mapping.system, None)
        if system:
            turns.append(Turn(role=Role.SYSTEM, text=require_text(system, "system"), loss=False))
        consumed.add(mapping.system.split(".")[0])
    if mapping.messages:
        messages = get_path(obj, mapping.messages)
        if not isinstance(messages, list):
            raise RecordError("invalid_field", f"{mapping.messages!r} must be a list")
        consumed.add(mapping.messages.split(".")[0])
        for i, message in enumerate(messages):
            where = f"turn {i}"
            message = require_turn(message, where)
            role = resolve_role(get_path(message, mapping.role, None), ctx, where)
            text = require_text(get_path(message, mapping.content, None), where)
            raw_loss = get_path(message, mapping.loss, None) if mapping.loss else None
            turns.append(Turn(role=role, text=text, loss=resolve_loss(raw_loss, role, where)))
    else:
        parts = []
        for path in mapping.prompt:
            value = get_path(obj, path)
            if value not in (None, ""):
                parts.append(require_text(value, path))
            consumed.add(path.split(".")[0])
        response = require_text(get_path(obj, mapping.response), mapping.response)
        consumed.add(mapping.response.split(".")[0])
        turns += [
            Turn(role=Role.USER, text="\n\n".join(parts), loss=False),
            Turn(role=Role.ASSISTANT, text=response, loss=True),
        ]
    return build_trajectory(obj, turns, ctx, consumed)
