"""OpenAI chat messages: ``{messages: [{role, content, tool_calls?, tool_call_id?}], ...}``.

Also reads what real agent corpora put around it: top-level ``reward`` / ``success`` / ``model``
(AgentGym rollouts; ``item_id`` and ``task_name`` too), ``reasoning_content`` (kept as the turn's
thought), LLaMA-Factory's typed content parts (``text`` / ``reasoning`` / ``tool_call``), and
answers stored as ``{"answer": ...}`` (Arena-Hard). An assistant message with several tool calls
stays one assistant turn with all its calls (parallel calls stay grouped); ids are the source's
``id``, else ``call_<n>`` (``n`` counts the trajectory's calls from 0). A ``tool`` message takes
the source's ``tool_call_id``, else answers the next unanswered call of the assistant turn before
it, in order; its ``name`` is the source's, else the answered call's. A tool message without an
id after parallel calls whose content is a JSON list with one item per call (``[{"tool_call_id",
"name", "content"}]``, LLaMA-Factory's reason_tool_use) becomes one tool turn per call.

Acknowledgements: in a record without loss flags, an assistant message that only acknowledges the
first user message ("Ok.", AgentGym's "OK. I'll follow your instructions and try my best to solve
the task.") and is followed by another user message is read ``loss=false``, as AgentInstruct and
AgentGym's own AgentTraj-L mark the same turn: it answers the environment's format prompt, not a
task (docs/transforms/read.md). A message with an explicit ``loss`` keeps it.
"""

from __future__ import annotations

import json
import re
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
    require_turn,
    resolve_loss,
    resolve_role,
    split_results,
)

FIELDS = FieldNames(
    id=("id", "item_id", "uid"),
    task=("task", "task_name"),
    reward=("reward",),
    success=("success",),
    tools=("tools",),
)
MESSAGE_KEYS = ("messages", "conversations", "conversation")
#: An assistant message that only acknowledges the instructions before it (case-insensitive).
ACKNOWLEDGEMENT = re.compile(
    r"^\s*(?:ok(?:ay)?|sure|understood)\s*[.!]?(?:\s*I(?:'ll| will) follow (?:your|the) instructions[^\n]*)?\s*$",
    re.IGNORECASE,
)


def _content(raw: Any, where: str) -> tuple[str, str | None, list[ToolCall]]:
    """(text, reasoning, tool calls) of a message's content."""
    if raw is None:
        return "", None, []
    if isinstance(raw, str):
        return raw, None, []
    if isinstance(raw, dict):
        for key in ("answer", "text", "content", "value"):
            if isinstance(raw.get(key), str):
                return raw[key], None, []
        raise RecordError("invalid_field", f"{where}: content object has no text field")
    if isinstance(raw, list):
        texts, reasoning, calls = [], [], []
        for j, part in enumerate(raw):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise RecordError("invalid_field", f"{where}: content part {j} must be an object")
            kind = part.get("type", "text")
            value = part.get("value", part.get("text", part.get("content")))
            if not isinstance(value, str):
                raise RecordError("invalid_field", f"{where}: content part {j} has no text")
            if kind == "reasoning":
                reasoning.append(value)
            elif kind == "tool_call":
                calls.append(parse_call_json(value, f"{where}, part {j}"))
            elif kind == "text":
                texts.append(value)
            else:
                raise RecordError("invalid_field", f"{where}: unsupported content part type {kind!r}")
        return "".join(texts), ("\n".join(reasoning) or None), calls
    raise RecordError("invalid_field", f"{where}: content must be text, got {type(raw).__name__}")


def _tool_calls(raw: Any, where: str) -> list[ToolCall]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RecordError("invalid_field", f"{where}: tool_calls must be a list")
    calls = []
    for j, call in enumerate(raw):
        if not isinstance(call, dict):
            raise RecordError("invalid_tool_call_json", f"{where}: tool call {j} must be an object")
        function = call.get("function", call)
        parsed = parse_call_json(json.dumps(function) if isinstance(function, dict) else function, f"{where}, call {j}")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise RecordError("invalid_tool_call_json", f"{where}: tool call {j} id must be a string")
        calls.append(parsed.model_copy(update={"id": call_id or None}))
    return calls


def _function_calls(raw: Any, where: str) -> list[ToolCall]:
    """A ``function_call`` field: one call object, or a list of them (parallel calls)."""
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    return [parse_call_json(json.dumps(item), f"{where}, call {j}") for j, item in enumerate(items)]


def _optional_str(value: Any, key: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RecordError("invalid_field", f"{where}: {key} must be a string, got {type(value).__name__}")
    return value


def parse_turns(messages: list[Any], ctx: ParseContext, extra_keys: tuple[str, ...] = ()) -> list[Turn]:
    """Turns from OpenAI-style messages; ``extra_keys`` are per-message keys to tolerate."""
    turns = []
    linker = CallLinker()
    acknowledgement = _acknowledgement(messages, ctx)
    for i, message in enumerate(messages):
        where = f"turn {i}"
        message = require_turn(message, where)
        role = resolve_role(message.get("role", message.get("from")), ctx, where)
        text, reasoning, calls = _content(message.get("content", message.get("value")), where)
        calls += _tool_calls(message.get("tool_calls"), where)
        calls += _function_calls(message.get("function_call"), where)
        thought = message.get("reasoning_content")
        thought = thought if isinstance(thought, str) and thought else reasoning
        loss = False if i == acknowledgement else resolve_loss(message.get("loss"), role, where)
        if calls and role is not Role.ASSISTANT:
            raise RecordError("invalid_field", f"{where}: only assistant turns may carry tool calls")
        if role is Role.ASSISTANT and not calls and message.get("content", message.get("value")) is None:
            raise RecordError(
                "empty_assistant_message",
                f"{where}: an assistant message with content null and no tool call has nothing to learn",
            )
        if role is Role.TOOL:
            given_id = _optional_str(message.get("tool_call_id"), "tool_call_id", where)
            results = [text] if given_id is not None else split_results(text, len(linker.pending))
            for result in results:  # several: one message holds the results of parallel calls
                call_id, name = linker.result(given_id, _optional_str(message.get("name"), "name", where))
                turns.append(Turn(role=role, text=result, loss=loss, thought=thought, tool_call_id=call_id, name=name))
            continue
        if role is Role.ASSISTANT and calls:
            calls = linker.calls(calls)
        turns.append(Turn(role=role, text=text, loss=loss, thought=thought, tool_calls=calls))
    return turns


def _role_of(message: Any, ctx: ParseContext) -> Role | None:
    if not isinstance(message, dict):
        return None
    try:
        return resolve_role(message.get("role", message.get("from")), ctx, "")
    except RecordError:
        return None


def _acknowledgement(messages: list[Any], ctx: ParseContext) -> int | None:
    """Index of the message that only acknowledges the first user message (see the module
    docstring), or ``None``: the first non-system messages are user, assistant, user, and the
    assistant message has no ``loss`` flag, no tool call and a text matching
    :data:`ACKNOWLEDGEMENT`."""
    order = [(i, role) for i, m in enumerate(messages[:8]) if (role := _role_of(m, ctx)) is not Role.SYSTEM]
    if [role for _, role in order[:3]] != [Role.USER, Role.ASSISTANT, Role.USER]:
        return None
    index = order[1][0]
    message = messages[index]
    content = message.get("content", message.get("value"))
    if message.get("loss") is not None or message.get("tool_calls") or message.get("function_call"):
        return None
    return index if isinstance(content, str) and ACKNOWLEDGEMENT.match(content) else None


def parse(obj: Any, ctx: ParseContext) -> Trajectory:
    record = require_object(obj)
    key, messages = require_list(record, MESSAGE_KEYS, "messages", ctx.messages_path)
    return build_trajectory(record, parse_turns(messages, ctx), ctx, {key})
