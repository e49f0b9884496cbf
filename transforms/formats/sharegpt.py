"""ShareGPT: ``{conversations: [{from, value}], tools?, system?}``, glaive's dialect included.

glaive adds ``function_call`` turns (JSON text ``{"name", "arguments"}``) parsed into a tool call
on an assistant turn, ``observation`` turns (tool results), and ``tools`` as a JSON string.
A ``system`` field becomes a leading system turn.
"""

from __future__ import annotations

from typing import Any

from schemas import Role, Trajectory, Turn
from transforms.formats.common import (
    FieldNames,
    ParseContext,
    build_trajectory,
    parse_call_json,
    require_list,
    require_object,
    require_text,
    require_turn,
    resolve_loss,
    resolve_role,
)

FIELDS = FieldNames(id=("id",), task=("task",), reward=("reward",), success=("success",), tools=("tools",))
MESSAGE_KEYS = ("conversations", "conversation", "messages")


def parse_turns(messages: list[Any], ctx: ParseContext) -> list[Turn]:
    """Turns from ShareGPT messages (``from``/``value``, or ``role``/``content``)."""
    turns = []
    for i, message in enumerate(messages):
        where = f"turn {i}"
        message = require_turn(message, where)
        raw_role = message.get("from", message.get("role"))
        role = resolve_role(raw_role, ctx, where)
        text = require_text(message.get("value", message.get("content")), where)
        tool_call = None
        if isinstance(raw_role, str) and raw_role.strip().lower() == "function_call":
            tool_call = parse_call_json(text, where)
        turns.append(
            Turn(role=role, text=text, loss=resolve_loss(message.get("loss"), role, where), tool_call=tool_call)
        )
    return turns


def parse(obj: Any, ctx: ParseContext) -> Trajectory:
    record = require_object(obj)
    key, messages = require_list(record, MESSAGE_KEYS, "conversation", ctx.messages_path)
    turns = parse_turns(messages, ctx)
    consumed = {key}
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        turns.insert(0, Turn(role=Role.SYSTEM, text=system, loss=False))
        consumed.add("system")
    return build_trajectory(record, turns, ctx, consumed)
