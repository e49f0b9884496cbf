"""``undeclared_tool`` and ``argument_schema``: the calls a sample supervises, against the tools it
declares.

Calls are the structured ``tool_calls`` of supervised assistant messages (each parallel call), and the actions of
supervised ReAct text (parsed by :func:`transforms.react.parse_turn`; final answers are not
calls). Declared tools are ``sample.tools``: a tool described only in prose is not declared. A
ReAct text command names a declared tool by the tool's name or an alias its tool card gives
(``ACTION: go to desk 1`` calls a declared ``go_to``), and its arguments are the ones the card
reads from the command; a structured call must name its tool exactly.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas import Role, Sample, ToolCall, ToolSpec, Turn
from schemas.tools import parameters_validator
from transforms.quality.check import SampleCheck, Verdict
from transforms.react import StepParseError, has_markers, parse_turn
from transforms.tool_cards import ToolCardError, validate_call

_last = threading.local()


def supervised_calls(sample: Sample) -> list[tuple[ToolCall, bool]]:
    """Every call the sample supervises, in order, each with whether it was read from ReAct text
    (both checks of this module ask for the same sample in turn: the last answer is kept per
    thread)."""
    memo = getattr(_last, "memo", None)
    if memo is not None and memo[0] is sample:
        return memo[1]
    calls = list(_calls(sample))
    _last.memo = (sample, calls)
    return calls


def _calls(sample: Sample) -> Iterator[tuple[ToolCall, bool]]:
    for message in sample.messages:
        if message.role is not Role.ASSISTANT or not message.loss:
            continue
        if message.tool_calls:
            for call in message.tool_calls:
                yield call, False
        elif message.part in (None, "react") and has_markers(message.content):
            try:
                steps = parse_turn(Turn(role=Role.ASSISTANT, text=message.content, loss=True))
            except StepParseError:
                continue
            for step in steps:
                if step.call is not None:
                    yield step.call, True


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).strip(".:").casefold()


@functools.cache
def _cards() -> tuple:
    """The built-in tool cards (templates/tools), read once per process."""
    from transforms.tool_cards import load_cards

    return load_cards().cards


@functools.cache
def _card_names() -> dict[str, frozenset[str]]:
    names: dict[str, set[str]] = {}
    for card in _cards():
        for tool in card.data.tools:
            names.setdefault(tool.name, set()).update(_norm(n) for n in (tool.name, *tool.aliases))
    return {name: frozenset(spoken) for name, spoken in names.items()}


def card_names(tool: str) -> frozenset[str]:
    """The names a text command may use for the declared tool ``tool``: the tool's own name and
    the aliases its tool card (templates/tools) gives, normalised (``go to`` for ``go_to``)."""
    return _card_names().get(tool, frozenset({_norm(tool)}))


def as_declared(call: ToolCall, tools: list[ToolSpec]) -> ToolCall:
    """A call read from ReAct text as the declared call its tool card makes of it (``take pen 1
    from desk 1`` -> ``take({"object": ..., "source": ...})``); the call itself when no card
    declares one of ``tools`` for it. Raises ``ToolCardError`` when the card's forms do not fit."""
    declared = {tool.name for tool in tools}
    if call.name in declared:
        try:
            validate_call(call, tools)
            return call  # already in the declared form (Action: go_to / Action Input: {...})
        except ToolCardError:
            pass
    for card in _cards():
        if any(t.name in declared and t.answers_to(call.name) for t in card.data.tools):
            return card.to_call(call, tools)
    return call


class UndeclaredTool(SampleCheck):
    name = "undeclared_tool"
    definition = (
        "Share of samples with a supervised call, among samples with any, where a call names a tool "
        "that is not in the sample's declared tools (sample.tools)."
    )
    threshold = 0.0
    severity = "block"

    def inspect(self, sample: Sample) -> Verdict | None:
        calls = supervised_calls(sample)
        if not calls:
            return None
        declared = {tool.name for tool in sample.tools}
        spoken = set().union(*(card_names(name) for name in declared)) if declared else set()
        for call, from_text in calls:
            if call.name not in declared and not (from_text and _norm(call.name) in spoken):
                listed = ", ".join(sorted(declared)) or "none"
                return Verdict(True, f"calls {call.name!r}; declared: {listed}", call.name)
        return Verdict(False)


class SchemaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    forbid_extra: bool = True


class ArgumentSchema(SampleCheck):
    name = "argument_schema"
    definition = (
        "Share of samples with a supervised call to a declared tool that has a parameter schema, "
        "where a call's arguments fail that JSON Schema (required keys, types, enums; extra keys "
        "too unless the schema allows them), validated with the jsonschema library (draft 7 unless "
        "the schema names its $schema); a schema that is itself invalid fails as 'invalid_schema'."
    )
    threshold = 0.0
    severity = "block"
    Options = SchemaOptions

    def _validator(self, parameters: Any) -> Any:
        """A validator for ``parameters``, or the text of the schema's own error."""
        validator = parameters_validator(parameters, self.options.forbid_extra)  # type: ignore[attr-defined]
        return f"invalid schema: {validator}" if isinstance(validator, str) else validator

    def inspect(self, sample: Sample) -> Verdict | None:
        schemas = {tool.name: tool.parameters for tool in sample.tools if tool.parameters}
        judged = False
        for call, from_text in supervised_calls(sample):
            if from_text:
                try:
                    call = as_declared(call, sample.tools)
                except ToolCardError as exc:
                    return Verdict(True, f"{call.name}: {exc}", "card_form")
            if call.name not in schemas:
                continue
            judged = True
            validator = self._validator(schemas[call.name])
            if isinstance(validator, str):
                return Verdict(True, f"{call.name}: {validator}", "invalid_schema")
            error = next(iter(validator.iter_errors(call.arguments)), None)
            if error is not None:
                return Verdict(True, f"{call.name}({call.arguments_json()[:120]}): {error.message}", error.validator)
        return Verdict(False) if judged else None
