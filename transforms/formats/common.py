"""Helpers shared by the format parsers: role aliases, field access, trajectory assembly."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schemas import Role, ToolCall, ToolSpec, Trajectory, Turn, parse_tool_list, trajectory_id
from transforms.base import RecordError

ROLE_ALIASES: dict[str, Role] = {
    "system": Role.SYSTEM,
    "human": Role.USER,
    "user": Role.USER,
    "gpt": Role.ASSISTANT,
    "assistant": Role.ASSISTANT,
    "bot": Role.ASSISTANT,
    "model": Role.ASSISTANT,
    "function_call": Role.ASSISTANT,
    "observation": Role.TOOL,
    "function": Role.TOOL,
    "tool": Role.TOOL,
}

_ID_SUFFIX = re.compile(r"^(?P<task>.+?)_\d+$")


@dataclass(frozen=True)
class FieldNames:
    """Where a format finds the top-level fields; dotted paths reach into nested objects."""

    id: tuple[str, ...] = ("id",)
    task: tuple[str, ...] = ()
    reward: tuple[str, ...] = ("reward",)
    success: tuple[str, ...] = ("success",)
    tools: tuple[str, ...] = ("tools",)


@dataclass(frozen=True)
class ParseContext:
    """What a parser needs besides the record: source name, file location, field names."""

    source: str
    file_name: str
    index: int
    location: str = ""
    task_from_id: bool = False
    fields: FieldNames = field(default_factory=FieldNames)
    task: str | None = None
    messages_path: str | None = None
    role_aliases: dict[str, Role] = field(default_factory=dict)
    max_record_chars: int = 1_000_000


_MISSING = object()


def get_path(obj: Any, path: str, default: Any = _MISSING) -> Any:
    """``obj[a][b]`` for ``path == "a.b"``; integer parts index lists (``a.-1`` is the last
    element of ``a``). ``default`` (or a RecordError) when absent."""
    current = obj
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and re.fullmatch(r"-?\d+", part) and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            if default is _MISSING:
                raise RecordError("missing_field", f"record has no field {path!r}")
            return default
    return current


def first_present(obj: dict[str, Any], paths: tuple[str, ...]) -> tuple[str | None, Any]:
    for path in paths:
        value = get_path(obj, path, None)
        if value is not None:
            return path, value
    return None, None


def require_object(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def require_list(
    obj: dict[str, Any], keys: tuple[str, ...], what: str, path: str | None = None
) -> tuple[str, list[Any]]:
    """The message list: at ``path`` when given (dotted, list indices allowed), else the first of
    ``keys`` present. Returns (top-level key consumed, list)."""
    if path:
        value = get_path(obj, path)
        if not isinstance(value, list):
            raise RecordError("invalid_field", f"{path!r} must be a list, got {type(value).__name__}")
        return path.split(".")[0], value
    for key in keys:
        if key in obj:
            value = obj[key]
            if not isinstance(value, list):
                raise RecordError("invalid_field", f"{key!r} must be a list, got {type(value).__name__}")
            return key, value
    raise RecordError("missing_field", f"record has no {what} field (looked for {', '.join(map(repr, keys))})")


def resolve_role(raw: Any, ctx: ParseContext, where: str) -> Role:
    if not isinstance(raw, str):
        raise RecordError("invalid_field", f"{where}: role must be a string, got {type(raw).__name__}")
    key = raw.strip().lower()
    role = ctx.role_aliases.get(key) or ROLE_ALIASES.get(key)
    if role is None:
        raise RecordError("unknown_role", f"{where}: unknown role {raw!r}")
    return role


def resolve_loss(raw: Any, role: Role, where: str) -> bool:
    """The source's loss flag; when absent, assistant turns are supervised and others are not."""
    if raw is None:
        return role is Role.ASSISTANT
    if isinstance(raw, bool):
        return raw
    raise RecordError("invalid_field", f"{where}: loss must be true, false or null, got {raw!r}")


def require_text(raw: Any, where: str) -> str:
    if isinstance(raw, str):
        return raw
    raise RecordError("invalid_field", f"{where}: text must be a string, got {type(raw).__name__}")


def parse_call_json(text: str, where: str) -> ToolCall:
    """A ``{"name": ..., "arguments": ...}`` call; arguments may themselves be JSON text."""
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise RecordError("invalid_tool_call_json", f"{where}: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        raise RecordError("invalid_tool_call_json", f"{where}: a tool call needs a non-empty 'name'")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise RecordError("invalid_tool_call_json", f"{where}: arguments are not JSON: {exc}") from None
    return ToolCall(name=value["name"], arguments=arguments)


class CallLinker:
    """Gives calls deterministic ids and links tool results to the calls they answer.

    Calls keep the source's id; a call without one gets ``call_<n>`` (``n``: the call's index in
    the trajectory, from 0). A result without an id answers the oldest call of the latest
    assistant turn that no result has answered yet; a result with an id answers that call.
    """

    def __init__(self) -> None:
        self.count = 0
        self.pending: list[ToolCall] = []

    def calls(self, calls: list[ToolCall]) -> list[ToolCall]:
        """The calls of one assistant turn, each with an id; they become the pending calls."""
        out = []
        for call in calls:
            out.append(call if call.id is not None else call.model_copy(update={"id": f"call_{self.count}"}))
            self.count += 1
        self.pending = list(out)
        return out

    def result(self, call_id: str | None, name: str | None) -> tuple[str | None, str | None]:
        """(tool_call_id, name) of a tool result; the answered call leaves the pending list."""
        match = None
        if call_id is not None:
            match = next((c for c in self.pending if c.id == call_id), None)
        elif self.pending:
            match = self.pending[0]
            call_id = match.id
        if match is not None:
            self.pending.remove(match)
            name = name or match.name
        return call_id, name


def split_results(text: str, calls: int) -> list[str]:
    """One result text per call when the result of ``calls`` parallel calls (``calls >= 2``) is a
    JSON list of exactly that many items (an item's ``content`` when it is an object with one, as
    in ``[{"tool_call_id", "name", "content"}]``; strings as they are, other values as compact
    JSON); otherwise ``[text]``."""
    if calls < 2:
        return [text]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [text]
    if not isinstance(value, list) or len(value) != calls:
        return [text]
    out = []
    for item in value:
        if isinstance(item, dict) and "content" in item:
            item = item["content"]
        out.append(item if isinstance(item, str) else json.dumps(item, ensure_ascii=False))
    return out


def parse_tools(obj: dict[str, Any], ctx: ParseContext) -> list[ToolSpec]:
    _, value = first_present(obj, ctx.fields.tools)
    try:
        return parse_tool_list(value)
    except (ValueError, ValidationError) as exc:
        raise RecordError("invalid_tools", str(exc).splitlines()[0]) from None


def _as_bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise RecordError("invalid_field", f"success must be a boolean or 0/1, got {value!r}")


def _as_reward(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("invalid_field", f"reward must be a number, got {value!r}")
    return float(value)


def build_trajectory(obj: dict[str, Any], turns: list[Turn], ctx: ParseContext, consumed: set[str]) -> Trajectory:
    """Assemble a Trajectory: ids, task, tools, reward, success and leftover scalars as metadata."""
    if not turns:
        raise RecordError("empty_conversation", "the record has no turns")
    size = sum(len(t.text) for t in turns)
    if size > ctx.max_record_chars:
        raise RecordError("record_too_large", f"{size} characters of text, limit {ctx.max_record_chars}")
    for index, turn in enumerate(turns):
        try:
            turn.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordError(
                "invalid_unicode", f"turn {index}: {exc.reason} (a lone surrogate escape such as \\ud800)"
            ) from None
    id_key, raw_id = first_present(obj, ctx.fields.id)
    source_id = str(raw_id) if raw_id is not None else f"{ctx.file_name}:{ctx.index}"
    task_key, task = first_present(obj, ctx.fields.task)
    if task is None:
        task = ctx.task
        if task is None and ctx.task_from_id and raw_id is not None and (match := _ID_SUFFIX.match(source_id)):
            task = match.group("task")
    reward_key, reward = first_present(obj, ctx.fields.reward)
    success_key, success = first_present(obj, ctx.fields.success)
    tools_key, _ = first_present(obj, ctx.fields.tools)
    used = consumed | {k for k in (id_key, task_key, reward_key, success_key, tools_key) if k}
    metadata = {
        key: value
        for key, value in obj.items()
        if key not in used and (value is None or isinstance(value, (str, int, float, bool)))
    }
    metadata["location"] = ctx.location or f"{ctx.file_name}:{ctx.index}"
    return Trajectory(
        id=trajectory_id(ctx.source, source_id, turns),
        source=ctx.source,
        source_id=source_id,
        task=str(task) if task is not None else None,
        tools=parse_tools(obj, ctx),
        turns=turns,
        reward=_as_reward(reward),
        success=_as_bool(success),
        metadata=metadata,
    )


def require_turn(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise RecordError("invalid_field", f"{where}: a turn must be an object, got {type(message).__name__}")
    return message
