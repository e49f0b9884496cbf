"""A ``Sample`` as the message dicts a Hugging Face chat template renders, and what a server
must parse back from each assistant turn.

Shared by training (``train/data.py``) and the audit (``transforms/quality/checks/round_trip.py``),
so both render the same conversation. Pure Python: no tokenizer, no transformers.

Message dicts follow the OpenAI / Hugging Face conventions: ``{"role", "content"}``; an assistant
message with native calls adds ``tool_calls: [{"id"?, "type": "function", "function": {"name",
"arguments"}}]`` (arguments as the JSON value, a dict for objects, as HF templates expect); a
``tool`` message adds ``tool_call_id`` and ``name`` when the record links them.

Guarantees of :func:`message_dict`:

- a message whose content spells its calls (:func:`calls_in_text`: align's ``arguments`` part,
  a kept-format ``react`` turn whose text has an action line naming every call) renders its
  content only: the call is trained as the text it is, never twice. A ``react`` turn whose
  content does not spell its calls (a kept OpenAI/ToolBench turn: prose or nothing beside a
  structured call) renders them natively, so a call is never lost;
- other calls are passed as native ``tool_calls`` when the template renders them
  (``native_calls=True``); otherwise they are appended to the content as one JSON line
  ``{"name": ..., "arguments": ...}`` each, so no call is ever dropped from the rendering.

:func:`template_tools`: a sample's tools go to the template unless the sample spells its calls
in text (align's ``tool`` / ``arguments`` parts, kept-format ``react`` turns): such a sample
already describes its tools and its call format in its own prompt, and a template's tool block
(``<tools>`` with "return <tool_call> JSON") would contradict the format it supervises. A sample
with native calls always gets them. A call-free sample (a negative) follows the data set's
convention (:func:`call_convention`, the way most calling samples write their calls): not when
it is ``text``, since if the negatives of a text-call data set alone showed the tool block, the
model would learn that a tool block means "never call".
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from schemas.sample import Message, Sample
from schemas.tools import ToolCall, ToolSpec

try:  # the record schema names the parts whose content states their calls
    from schemas.sample import CALL_IN_TEXT_PARTS
except ImportError:  # pragma: no cover - before the structured-calls schema
    CALL_IN_TEXT_PARTS = frozenset({"arguments", "react"})


def tool_schemas(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tools as OpenAI-style function schemas ``{type: function, function: {name, description,
    parameters}}``, what ``apply_chat_template(tools=...)`` takes."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools
    ]


def call_dict(call: ToolCall) -> dict[str, Any]:
    """One call in the OpenAI / HF form (``id`` only when the record has one)."""
    out: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    call_id = getattr(call, "id", None)
    if call_id is not None:
        out = {"id": call_id, **out}
    return out


def calls_as_text(calls: Sequence[ToolCall]) -> str:
    """Calls as JSON lines ``{"name": ..., "arguments": ...}`` (for templates without native calls)."""
    return "\n".join(
        json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False, separators=(", ", ": "))
        for c in calls
    )


_ACTION_LINE = re.compile(r"^[ \t]*(?:Action|ACTION|Act)[ \t]*:", re.MULTILINE)


def calls_in_text(message: Message) -> bool:
    """Whether the message's content spells its calls: align's ``arguments`` part (checked by
    align to parse to its call), or a ``react`` turn with no structured call or with an action
    line and every call's name in its text."""
    if message.part not in CALL_IN_TEXT_PARTS:
        return False
    if message.part != "react":
        return True
    calls = getattr(message, "tool_calls", None) or []
    if not calls:
        return True
    return bool(_ACTION_LINE.search(message.content)) and all(c.name in message.content for c in calls)


def spells_calls(sample: Sample) -> bool:
    """Whether the sample supervises calls written as text: align's ``tool`` part (the tool
    choice in words) or a message whose content spells its calls (:func:`calls_in_text`)."""
    return any(m.part == "tool" or calls_in_text(m) for m in sample.messages)


def call_counts(samples: Iterable[Sample]) -> tuple[int, int]:
    """``(native, text)``: the samples with a native call, and those that spell calls in text."""
    native = text = 0
    for sample in samples:
        if spells_calls(sample):
            text += 1
        elif any(native_calls(m) for m in sample.messages):
            native += 1
    return native, text


def call_convention(samples: Iterable[Sample]) -> str:
    """How a data set writes its calls: ``native`` or ``text``, whichever more samples that call
    use (``native`` on a tie), ``none`` when no sample calls."""
    return convention_of(*call_counts(samples))


def convention_of(native: int, text: int) -> str:
    """:func:`call_convention` from :func:`call_counts`."""
    if not native and not text:
        return "none"
    return "text" if text > native else "native"


def template_tools(sample: Sample, convention: str = "native") -> list[dict[str, Any]] | None:
    """The tools to give the template (module docstring): the sample's, unless it has none or
    spells its calls in text; a call-free sample's only when the data's ``convention`` is not
    ``text``."""
    if not sample.tools or spells_calls(sample):
        return None
    if convention == "text" and not any(native_calls(m) for m in sample.messages):
        return None
    return tool_schemas(sample.tools)


def native_calls(message: Message) -> list[ToolCall]:
    """The calls a message makes that its content does not already spell."""
    calls = list(getattr(message, "tool_calls", None) or [])
    if not calls or calls_in_text(message):
        return []
    return calls


def message_dict(message: Message, native: bool = True) -> dict[str, Any]:
    """The template dict of ``message`` (guarantees in the module docstring)."""
    out: dict[str, Any] = {"role": message.role.value, "content": message.content}
    calls = native_calls(message)
    if calls and native:
        out["tool_calls"] = [call_dict(c) for c in calls]
    elif calls:
        text = calls_as_text(calls)
        out["content"] = f"{message.content}\n{text}" if message.content else text
    if message.role.value == "tool":
        for key in ("tool_call_id", "name"):
            value = getattr(message, key, None)
            if value is not None:
                out[key] = value
    return out


def conversation(
    sample: Sample, system_prompt: str | None = None, native: bool = True
) -> tuple[list[dict[str, Any]], list[bool], list[int]]:
    """The sample's template dicts up to its last supervised message, their loss flags, and the
    index in ``sample.messages`` of each dict (``-1`` for an added system prompt).

    ``system_prompt`` is put first when the sample has no system message.
    """
    messages = list(sample.messages)
    last = max((i for i, m in enumerate(messages) if m.loss), default=-1)
    dicts = [message_dict(m, native) for m in messages[: last + 1]]
    flags = [m.loss for m in messages[: last + 1]]
    index = list(range(last + 1))
    if system_prompt is not None and not (dicts and dicts[0]["role"] == "system"):
        dicts.insert(0, {"role": "system", "content": system_prompt})
        flags.insert(0, False)
        index.insert(0, -1)
    return dicts, flags, index


def canonical(value: Any) -> str:
    """A JSON value as canonical text (sorted keys): ``1`` and ``1.0``, ``true`` and ``1`` differ."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def expected_reply(message: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """What parsing an assistant turn must give back: its content (stripped, as parsers strip)
    and its calls as ``(name, canonical arguments)`` in order."""
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call)
        calls.append((fn["name"], canonical(fn.get("arguments", {}))))
    return (message.get("content") or "").strip(), calls


def parsed_reply(parsed: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """A parsed message (``tokenizer.parse_response``'s dict) in the form of :func:`expected_reply`."""
    content = parsed.get("content") or ""
    if not isinstance(content, str):
        content = canonical(content)
    calls = []
    for call in parsed.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        arguments = fn.get("arguments", {}) if isinstance(fn, dict) else None
        if isinstance(arguments, str):  # some templates keep the JSON text
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        name = fn.get("name") if isinstance(fn, dict) else None
        calls.append((str(name), canonical(arguments)))
    return content.strip(), calls


def reply_mismatch(expected: tuple[str, list[tuple[str, str]]], parsed: tuple[str, list[tuple[str, str]]]) -> str:
    """``""`` when ``parsed`` equals ``expected``, else a short reason: ``content`` or ``calls``
    with what differs."""
    (want_text, want_calls), (got_text, got_calls) = expected, parsed
    if want_calls != got_calls:
        want = [n for n, _ in want_calls]
        got = [n for n, _ in got_calls]
        if want == got:
            return f"calls: arguments differ ({_clip(str(want_calls))} vs {_clip(str(got_calls))})"
        return f"calls: expected {want}, parsed {got}"
    if want_text != got_text:
        return f"content: expected {_clip(want_text)!r}, parsed {_clip(got_text)!r}"
    return ""


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
