"""Tool cards: the declared tools of each agent environment, kept as data under ``templates/tools/``.

Environments whose actions are text commands (AgentInstruct OS bash, DB SQL, ALFWorld, WebShop,
KG functions, Mind2Web, FireAct's Wikipedia API, BabyAI) declare no tools in their trajectories.
A *tool card* (one YAML file per environment) declares them: each tool has a name, a
description and a JSON Schema of its arguments, so the same action becomes a call to a declared
tool whose arguments validate. Sources that carry their own function list (ToolBench, glaive)
get a card with ``own_tools: true``: the trajectory's tools are the declared set and calls are
validated against them.

Public API (stable; other steps import it):

- :func:`load_cards` ``(user_dir=None, base_dir=".") -> ToolCards``: the built-in cards, with
  the cards of a user's folder (``*.yaml``, same format) replacing built-ins of the same ``card``
  name or adding new ones. Raises :class:`CardFileError` for a malformed card. Cards are plain
  picklable data: load once when a pipeline is built, ship to workers.
- :meth:`ToolCards.card_for` ``(trajectory) -> ToolCard | None``: the first card (in file-name
  order, user cards first) whose ``match`` accepts the trajectory's ``task`` or ``source``.
- :meth:`ToolCard.tools_for` ``(trajectory, finals=True) -> list[ToolSpec]``: the declared tools
  (the card's, or the trajectory's own); ``finals=False`` leaves out the tools that end an
  episode (``answer``, ``finish``) for samples whose final answers are prose.
- :meth:`ToolCard.to_call` ``(call, tools) -> ToolCall``: a parsed action
  (:func:`transforms.react.parse_turn`) as a call to a declared tool, named as declared, with
  named arguments that validate against the tool's JSON Schema (``jsonschema``). Raises
  :class:`ToolCardError` with ``reason`` ``undeclared_tool`` or ``invalid_arguments``.
- :meth:`ToolCard.final_call` ``(answer, tools) -> ToolCall | None``: a final step (with an
  answer text, or ``None`` for "finished") as a call to the card's final tool, or ``None`` when
  the card has no final tool of that kind (the answer is then prose). The answer text is the
  value of the tool's first parameter: as written for a string parameter, parsed as JSON for any
  other type (DB-Bench's ``Final Answer: ["Paris", 3]`` is the list ``["Paris", 3]``, not a
  string that holds a list's JSON); text that does not parse is ``invalid_arguments``.
- :meth:`ToolCard.prompt_turns` ``(turns) -> list[Turn]``: the trajectory's turns with the
  environment's format prompt removed (its format rules, ``Action:`` demands and the assistant's
  "Ok." acknowledgement, and user turns that are the collection harness's, not the task's); the
  task itself is kept. In-context examples stay as turns.
- :attr:`ToolCard.instruction`: the environment's task in natural language, without format rules;
  :meth:`ToolCard.instruction_for` ``(tools)``: the one for a trajectory that declares ``tools``.
- :func:`validate_call` ``(call, tools) -> None``: the check every aligned call passes.

Card format (see ``templates/tools/os.yaml``)::

    card: os                      # unique name
    match: {tasks: [os]}          # and/or sources: [...]
    instruction: What the agent does here, in words (no format rules).
    instruction_without_tools: …  # optional: the instruction when a trajectory declares no tools
    own_tools: false              # true: the trajectory's own tools are the declared set
    prompt:                       # optional: how the environment's prompt is removed
      system: drop                # drop | keep the source's system turn
      first_user:
        match: regex              # the first user turn is the environment's prompt when it matches
        keep: regex               # optional: group ``task`` is kept as the user turn; absent: drop
        drop_reply: true          # also drop a loss=false acknowledgement right after it
      strip: [regex, ...]         # removed from every user turn
      drop_user: [regex, ...]     # user turns that match are dropped (not the task's text)
    tools:
      - name: go_to
        description: ...
        parameters: {type: object, properties: {...}, required: [...], additionalProperties: false}
        aliases: [go to]          # action names the parser gives (case-insensitive); name is one
        pattern: (?P<receptacle>.+)   # optional: named groups of the action's text argument
        final: answer | done      # optional: ends the episode (with an answer / without)

Guarantees: a card's schemas are valid JSON Schemas and its regexes compile (checked on load);
:meth:`ToolCard.to_call` never returns a call that fails :func:`validate_call`; everything is
deterministic and free of I/O after :func:`load_cards`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas import Role, ToolCall, ToolSpec, Trajectory, Turn

#: libyaml's safe loader where installed (same documents as yaml.safe_load, faster).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

BUILTIN_DIR = "tools"
#: Argument keys under which :mod:`transforms.react` puts an action's text argument.
TEXT_KEYS = ("input", "target", "script", "query")


class CardFileError(ValueError):
    """A tool card that cannot be used (bad YAML, unknown keys, an invalid schema or regex)."""


class ToolCardError(ValueError):
    """A call that does not fit the declared tools; ``reason`` is ``undeclared_tool`` or
    ``invalid_arguments`` (the ledger reason), ``detail`` says what exactly."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regex {value!r}: {exc}") from None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FirstUserRule(_Model):
    match: str
    keep: str | None = None
    drop_reply: bool = False

    @field_validator("match", "keep")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return value if value is None else _regex(value)


class PromptRules(_Model):
    system: Literal["drop", "keep"] = "drop"
    first_user: FirstUserRule | None = None
    strip: list[str] = Field(default_factory=list)
    drop_user: list[str] = Field(default_factory=list)

    @field_validator("strip", "drop_user")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        return [_regex(v) for v in value]


class CardTool(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    aliases: list[str] = Field(default_factory=list)
    pattern: str | None = None
    final: Literal["answer", "done"] | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        return value if value is None else _regex(value)

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.validators.validator_for(value).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"parameters is not a valid JSON Schema: {exc.message}") from None
        return value

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def answers_to(self, name: str) -> bool:
        wanted = _norm_name(name)
        return any(_norm_name(a) == wanted for a in (self.name, *self.aliases))


class Match(_Model):
    tasks: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)


class CardData(_Model):
    card: str = Field(min_length=1)
    match: Match
    instruction: str = ""
    #: The instruction when a trajectory declares no tools (an ``own_tools`` card's conversation
    #: without functions); ``None``: ``instruction``. A prompt that promises tools it does not
    #: list teaches a model to expect, or invent, them.
    instruction_without_tools: str | None = None
    own_tools: bool = False
    prompt: PromptRules = Field(default_factory=PromptRules)
    tools: list[CardTool] = Field(default_factory=list)


def _norm_name(name: str) -> str:
    return name.strip().rstrip(".:").strip().casefold()


def validate_call(call: ToolCall, tools: list[ToolSpec]) -> None:
    """Raise :class:`ToolCardError` unless ``call`` names one of ``tools`` and its arguments
    validate against that tool's JSON Schema (an empty schema accepts any arguments)."""
    spec = next((t for t in tools if t.name == call.name), None)
    if spec is None:
        declared = ", ".join(t.name for t in tools) or "none"
        raise ToolCardError("undeclared_tool", f"call of {call.name!r}; declared: {declared}")
    schema = spec.parameters if isinstance(spec.parameters, dict) else {}
    if not schema:
        return
    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(call.arguments))
    except jsonschema.SchemaError as exc:
        raise ToolCardError("invalid_arguments", f"tool {call.name!r} has an invalid schema: {exc.message}") from None
    except jsonschema.exceptions.UnknownType as exc:  # e.g. Python's 'dict' or 'int' as a type name
        detail = f"tool {call.name!r} has an invalid schema: unknown type {exc.type!r}"
        raise ToolCardError("invalid_arguments", detail) from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
        raise ToolCardError("invalid_arguments", f"{call.name} {where}: {error.message}")


def _text_argument(arguments: Any) -> str | None:
    """The action's text argument ("" when it has none), or None when the arguments are named."""
    if isinstance(arguments, str):
        return arguments
    if arguments in ({}, None, []):
        return ""
    if isinstance(arguments, dict) and len(arguments) == 1:
        (key, value), *_ = arguments.items()
        if key in TEXT_KEYS and isinstance(value, str):
            return value
    return None


@dataclass(frozen=True)
class ToolCard:
    """One environment's declared tools and prompt rules (see the module docstring)."""

    data: CardData
    origin: str = ""
    _patterns: dict[str, re.Pattern[str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for tool in self.data.tools:
            if tool.pattern is not None:
                self._patterns[tool.name] = re.compile(tool.pattern, re.DOTALL)

    @property
    def name(self) -> str:
        return self.data.card

    @property
    def instruction(self) -> str:
        return self.data.instruction.strip()

    def instruction_for(self, tools: list[ToolSpec]) -> str:
        """The instruction for a trajectory that declares ``tools``: ``instruction_without_tools``
        when there are none and the card gives it, else ``instruction``."""
        if not tools and self.data.instruction_without_tools is not None:
            return self.data.instruction_without_tools.strip()
        return self.instruction

    @property
    def own_tools(self) -> bool:
        return self.data.own_tools

    def matches(self, trajectory: Trajectory) -> bool:
        match = self.data.match
        return (trajectory.task is not None and trajectory.task in match.tasks) or trajectory.source in match.sources

    def tools_for(self, trajectory: Trajectory, finals: bool = True) -> list[ToolSpec]:
        if self.own_tools:
            return list(trajectory.tools)
        return [t.spec() for t in self.data.tools if finals or t.final is None]

    # -- calls ---------------------------------------------------------------------------------

    def to_call(self, call: ToolCall, tools: list[ToolSpec]) -> ToolCall:
        """``call`` (a parsed action) as a schema-valid call to a declared tool."""
        if self.own_tools:
            validate_call(call, tools)
            return call
        declared = {t.name for t in tools}
        candidates = [t for t in self.data.tools if t.name in declared and t.answers_to(call.name)]
        if not candidates:
            names = ", ".join(sorted(declared)) or "none"
            raise ToolCardError("undeclared_tool", f"card {self.name!r}: no tool for action {call.name!r}; has {names}")
        text = _text_argument(call.arguments)
        last: ToolCardError | None = None
        for tool in candidates:
            pattern = self._patterns.get(tool.name)
            if pattern is not None:
                if text is None:
                    continue
                found = pattern.fullmatch(text.strip())
                if found is None:
                    continue
                arguments: Any = {k: v.strip() for k, v in found.groupdict().items() if v is not None}
            else:
                arguments = call.arguments
            made = ToolCall(name=tool.name, arguments=arguments)
            try:
                validate_call(made, tools)
            except ToolCardError as exc:
                last = exc
                continue
            return made
        if last is not None:
            raise last
        shown = text if text is not None else call.arguments
        raise ToolCardError(
            "invalid_arguments", f"card {self.name!r}: arguments of {call.name!r} fit no declared form: {shown!r}"[:500]
        )

    def final_call(self, answer: str | None, tools: list[ToolSpec]) -> ToolCall | None:
        """A final step as a call to the card's final tool (``final: answer`` when there is an
        answer text, ``final: done`` when not), or ``None`` when the card has none declared."""
        declared = {t.name for t in tools}
        kind = "answer" if answer else "done"
        for tool in self.data.tools:
            if tool.final == kind and tool.name in declared:
                if kind == "done":
                    made = ToolCall(name=tool.name, arguments={})
                else:
                    properties = tool.parameters.get("properties") or {}
                    key = next(iter(properties), "answer")
                    value = self._final_value(tool.name, answer.strip(), properties.get(key) or {})
                    made = ToolCall(name=tool.name, arguments={key: value})
                validate_call(made, tools)
                return made
        return None

    def _final_value(self, tool: str, text: str, schema: dict[str, Any]) -> Any:
        """``text`` as the value of a parameter with JSON Schema ``schema``: itself for a string
        (or untyped) parameter, its JSON value for any other type."""
        kinds = schema.get("type")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
        if not kinds or "string" in kinds:
            return text
        try:
            return json.loads(text)
        except ValueError:
            raise ToolCardError(
                "invalid_arguments",
                f"card {self.name!r}: the final answer for {tool!r} is no JSON {'/'.join(kinds)}: {text!r}"[:500],
            ) from None

    # -- the environment's prompt ---------------------------------------------------------------

    def prompt_turns(self, turns: list[Turn]) -> list[Turn]:
        """``turns`` without the environment's format prompt (see the module docstring)."""
        rules = self.data.prompt
        out: list[Turn] = []
        first_user_done = False
        drop_next_reply = False
        strip = [re.compile(p) for p in rules.strip]
        drop = [re.compile(p) for p in rules.drop_user]
        for turn in turns:
            if turn.role is Role.SYSTEM and rules.system == "drop":
                continue
            if drop_next_reply:
                drop_next_reply = False
                if turn.role is Role.ASSISTANT and not turn.loss and len(turn.text) < 200:
                    continue
            if turn.role is Role.USER and not first_user_done:
                first_user_done = True
                rule = rules.first_user
                if rule is not None and re.search(rule.match, turn.text):
                    drop_next_reply = rule.drop_reply
                    kept = re.search(rule.keep, turn.text, re.DOTALL) if rule.keep else None
                    if kept is None or not kept.group("task").strip():
                        drop_next_reply = True  # the prompt is gone: so is its acknowledgement ("Ok.")
                        continue
                    turn = turn.model_copy(update={"text": kept.group("task").strip()})
            if turn.role is Role.USER and any(p.search(turn.text) for p in drop):
                continue
            if turn.role is Role.USER and strip:
                text = turn.text
                for pattern in strip:
                    text = pattern.sub("", text)
                turn = turn.model_copy(update={"text": text.strip()})
            out.append(turn)
        return out


@dataclass(frozen=True)
class ToolCards:
    """A set of cards, in lookup order."""

    cards: tuple[ToolCard, ...]

    def card_for(self, trajectory: Trajectory) -> ToolCard | None:
        return next((c for c in self.cards if c.matches(trajectory)), None)

    def names(self) -> list[str]:
        return [c.name for c in self.cards]


def parse_card(text: str, origin: str) -> ToolCard:
    """One card from YAML text; raises :class:`CardFileError` naming ``origin``."""
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise CardFileError(f"{origin}: invalid YAML: {exc}") from None
    try:
        card = CardData.model_validate(data)
    except ValidationError as exc:
        raise CardFileError(f"{origin}: {exc}") from None
    if not card.own_tools and not card.tools:
        raise CardFileError(f"{origin}: a card declares tools or sets own_tools: true")
    names = [t.name for t in card.tools]
    if len(set(names)) != len(names):
        raise CardFileError(f"{origin}: tool names repeat")
    return ToolCard(card, origin)


@functools.cache
def _parsed_builtin_cards() -> tuple[ToolCard, ...]:
    folder = resources.files("templates").joinpath(BUILTIN_DIR)
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".yaml")), key=lambda e: e.name)
    return tuple(parse_card(e.read_text(encoding="utf-8"), f"templates/{BUILTIN_DIR}/{e.name}") for e in entries)


def _builtin_cards() -> list[ToolCard]:
    """The installed cards, parsed and schema-checked once per process (a run loads them in
    several steps and workers; cards are frozen)."""
    return list(_parsed_builtin_cards())


def load_cards(user_dir: str | None = None, base_dir: str = ".") -> ToolCards:
    """The built-in cards, with a user's folder of cards laid over them (see the module docstring)."""
    cards = _builtin_cards()
    if user_dir:
        folder = user_dir if os.path.isabs(user_dir) else os.path.join(base_dir, user_dir)
        if not os.path.isdir(folder):
            raise CardFileError(f"tool cards folder {folder!r} does not exist")
        user = []
        for name in sorted(os.listdir(folder)):
            if name.endswith((".yaml", ".yml")):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    user.append(parse_card(handle.read(), os.path.join(user_dir, name)))
        replaced = {c.name for c in user}
        cards = user + [c for c in cards if c.name not in replaced]
    seen: set[str] = set()
    for card in cards:
        if card.name in seen:
            raise CardFileError(f"two cards are named {card.name!r}")
        seen.add(card.name)
    return ToolCards(tuple(cards))


__all__ = [
    "CardFileError",
    "ToolCard",
    "ToolCardError",
    "ToolCards",
    "load_cards",
    "parse_card",
    "validate_call",
]
