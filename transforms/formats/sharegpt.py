"""ShareGPT: ``{conversations: [{from, value}], tools?, system?}``, glaive's dialect included.

glaive adds ``function_call`` turns (JSON text ``{"name", "arguments"}``, or a JSON list of such
calls for parallel calls, as LLaMA-Factory writes them) parsed into the structured calls of one
assistant turn whose text is empty (the call is not kept twice), ``observation`` turns (tool
results), and ``tools`` as a JSON string. Calls get ids ``call_<n>`` (their index in the
trajectory); an observation answers the oldest unanswered call of the call turn before it, and
an observation that is a JSON list with one item per call of a parallel call turn becomes one
tool turn per call (the items as compact JSON text). A ``system`` field becomes a leading system
turn.
"""

from __future__ import annotations

import json
from typing import Any

from schemas import Role, ToolCall, Trajectory, Turn
from transforms.base import RecordError
from transforms.formats.common import (
    CallLinker,
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
    split_results,
)

FIELDS = FieldNames(id=("id",), task=("task",), reward=("reward",), success=("success",), tools=("tools",))
MESSAGE_KEYS = ("conversations", "conversation", "messages")


def _calls_of(text: str, where: str) -> list[ToolCall]:
    """The calls of a ``function_call`` turn: one call object or a list of them."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError("invalid_tool_call_json", f"{where}: {exc}") from None
    if isinstance(value, list):
        if not value:
            raise RecordError("invalid_tool_call_json", f"{where}: an empty list of calls")
        return [parse_call_json(item, f"{where}, call {j}") for j, item in enumerate(value)]
    return [parse_call_json(value, where)]


def parse_turns(messages: list[Any], ctx: ParseContext) -> list[Turn]:
    """Turns from ShareGPT messages (``from``/``value``, or ``role``/``content``)."""
    turns = []
    linker = CallLinker()
    for i, message in enumerate(messages):
        where = f"turn {i}"
        message = require_turn(message, where)
        raw_role = message.get("from", message.get("role"))
        role = resolve_role(raw_role, ctx, where)
        text = require_text(message.get("value", message.get("content")), where)
        loss = resolve_loss(message.get("loss"), role, where)
        if isinstance(raw_role, str) and raw_role.strip().lower() == "function_call":
            calls = linker.calls(_calls_of(text, where))
            turns.append(Turn(role=role, text="", loss=loss, tool_calls=calls))
        elif role is Role.TOOL:
            results = split_results(text, len(linker.pending))
            if len(results) == 1 and len(linker.pending) > 1:  # one result for several calls
                turns.append(Turn(role=role, text=text, loss=loss))
                linker.pending = []
                continue
            for result in results:
                call_id, name = linker.result(None, None)
                turns.append(Turn(role=role, text=result, loss=loss, tool_call_id=call_id, name=name))
        else:
            turns.append(Turn(role=role, text=text, loss=loss))
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
