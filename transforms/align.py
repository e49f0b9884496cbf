"""Step ``align``: Agent-FLAN format alignment, Trajectory -> Sample.

Each ReAct / JSON agent step becomes natural multi-turn chat: the thought is plain assistant
prose; the tool choice and the arguments are their own assistant turns; a final answer is plain
prose, or a call to the environment's final tool (``answer``, ``finish``, ToolBench's ``Finish``)
when its tool card declares one; observations stay as they were (user or tool turns).

The model makes every decision. With ``decision: with_thought`` (default) the thought and the
decision that follows it (a tool choice or an answer) are consecutive assistant messages, one
assistant turn split by capability: no user turn stands between the thought and the decision,
so the user or environment turn before every decision is the task or an observation, never a
prompt that hints at what comes. Only after the model has named its tool does a short user turn
ask it on, for the arguments. With ``decision: after_continue`` a user turn comes between any
two assistant messages. Either way those turns come from one neutral pool (``elicit_continue``:
"Go on.", "Continue.", ...), chosen by a keyed hash of the position, never of what follows. See
docs/transforms/align.md for why.

Tools are declared by the trajectory's tool card (:mod:`transforms.tool_cards`,
``templates/tools/*.yaml``): the system message states the environment's task in words
(``instruction``) and describes exactly the declared tools, which are also ``sample.tools`` (a
trajectory that declares none gets the card's ``instruction_without_tools`` and no tool list). The
environment's format prompt (``Action:`` demands, "judged as FAIL", the "Ok." acknowledgement) is
removed by the card's prompt rules; the in-context example stays, aligned like the rest, with
``loss=false``. All wording comes from the phrase book ``templates/align/default.yaml`` (or a
user's file), one variant chosen per use by a keyed hash.

Guarantees:
- generated assistant turns keep the loss flag of the source turn (the in-context example and
  other loss=false turns stay loss=false); elicitation turns are never supervised;
- every source tool call appears as a ``tool`` turn naming a declared tool followed by an
  ``arguments`` turn whose text parses to the call's JSON arguments (and carries the call;
  checked for every call, a phrase book that words it otherwise dead-letters the trajectory as
  ``arguments_not_json``); the call validates against the tool's JSON Schema; otherwise the
  trajectory is filtered (``undeclared_tool``, ``invalid_arguments``) with the offending call;
- no user turn stands between a thought and its decision (``with_thought``), and every
  generated user turn is drawn independently of what follows it;
- no aligned assistant message contains a ReAct marker (``marker_in_output``), and no system or
  user turn of an aligned sample demands a format (filtered as ``format_in_instruction``: ReAct
  markers or a ``format_demands`` phrase); a turn that cannot be parsed dead-letters
  (``unparseable_step``);
  with ``on_unparseable: keep_unaligned`` each of these keeps the trajectory in its original form
  instead (derivation ``unaligned``);
- a deterministic share of each source (``keep_format_share``; default 10 % of ``toolbench``,
  0 elsewhere) stays in its original form, prompt and example untouched (derivation
  ``keep_format``), so the format skill is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from schemas import Message, Role, Sample, SampleKind, ToolCall, ToolSpec, Trajectory, Turn
from transforms.base import (
    LEDGER,
    MAIN,
    REJECTED,
    Filtered,
    RecordError,
    RecordStep,
    Stat,
    StepConfig,
    StepContext,
    check_regexes,
)
from transforms.grounded_arguments import ungrounded_call
from transforms.json_text import dumps_indented
from transforms.phrasing import Deferred, PhraseBook, PhrasingError, load_book, parse_book, read_text
from transforms.quality.language import SCRIPT_LANGUAGES, detect_language
from transforms.react import FINISH_NAMES, ParsedStep, StepParseError, has_markers, parse_turn
from transforms.samples import message_of, sample_of
from transforms.sampling import RankKey, keyed_fraction, prefix_threshold, rank_key
from transforms.tool_cards import CardFileError, ToolCard, ToolCardError, ToolCards, load_cards, validate_call

if TYPE_CHECKING:
    import apache_beam as beam

EXAMPLE_TOOL = {"name": "get_weather", "description": "Weather of a city.", "arguments": "city (string, required)"}
#: Every slot of the align phrase book and the variables it gets at run time (example values,
#: used to render each variant once before the run).
SLOT_VARIABLES: dict[str, dict[str, Any]] = {
    "system_tools": {"tools": [EXAMPLE_TOOL], "instruction": "You help the user with the weather."},
    "tool": {"tool": "get_weather"},
    "arguments": {
        "tool": "get_weather",
        "arguments_json": '{"city":"Oslo"}',
        "arguments_pretty": '{\n  "city": "Oslo"\n}',
    },
    "answer": {"answer": "42.", "answer_bare": "42"},
    "answer_sentence": {"answer": "It snows in Oslo."},
    "finish": {},
    "elicit_continue": {},
}
#: Slots of earlier phrase books that told the model what to do next; a user book that still
#: defines them is refused with this explanation.
REMOVED_SLOTS = {
    "elicit_tool": "it asked for a tool before the model had decided to call one",
    "elicit_arguments": "it was asked only before calls, so it told the model that a call comes",
    "elicit_answer": "it asked for the answer before the model had decided to answer",
}
#: Phrases of a system or user turn that demand an output format (besides the ReAct markers).
DEFAULT_FORMAT_DEMANDS = [
    r"judged as FAIL",
    r"(?i)(?:must|should) (?:strictly )?(?:follow|use) (?:this|the following) format",
    r"(?i)\bprint like this\b",
    r"(?i)respond with 'Final Answer",
]
#: Reasons that filter a trajectory (a deliberate drop of data that would teach the wrong thing);
#: the others (an unparseable step, a marker left in the output) are dead letters.
FILTER_REASONS = frozenset(
    {
        "undeclared_tool",
        "invalid_arguments",
        "format_in_instruction",
        "several_actions_in_a_turn",
        "ungrounded_argument",
    }
)
ANY_SOURCE = "*"
SENTENCE_WORDS = 6


class AlignConfig(StepConfig):
    """Config of ``align`` (see the module docstring and docs/transforms/align.md)."""

    keep_format_share: float | dict[str, float] = Field(default_factory=lambda: {"toolbench": 0.1})
    templates: str | None = None
    tool_cards: str | None = None
    finals: Literal["call", "prose"] = "call"
    decision: Literal["with_thought", "after_continue"] = "with_thought"
    format_demands: list[str] = Field(default_factory=lambda: list(DEFAULT_FORMAT_DEMANDS))
    on_unparseable: Literal["dead_letter", "keep_unaligned"] = "dead_letter"
    system: Literal["replace", "keep"] = "replace"
    kind: SampleKind = "agent"
    style: Literal["agent_flan", "native"] = "agent_flan"

    @field_validator("keep_format_share")
    @classmethod
    def _shares(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        shares = value.values() if isinstance(value, dict) else [value]
        if any(not 0.0 <= s <= 1.0 for s in shares):
            raise ValueError("keep_format_share values must be in [0, 1]")
        return value

    @field_validator("format_demands")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        return check_regexes(value)

    def keep_share_of(self, source: str) -> float:
        """The kept-format share of ``source`` (a number applies to every source; in a mapping,
        ``*`` covers the sources it does not name, 0 when absent)."""
        if isinstance(self.keep_format_share, dict):
            return self.keep_format_share.get(source, self.keep_format_share.get(ANY_SOURCE, 0.0))
        return self.keep_format_share


def describe_parameters(parameters: Any) -> str:
    """JSON-schema parameters in words: ``city (string, required): City name; days (integer)``."""
    if not isinstance(parameters, dict):
        return ""
    properties = parameters.get("properties")
    if not isinstance(properties, dict):
        return ""
    required = set(parameters.get("required") or [])
    parts = []
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        tags = [str(spec["type"])] if spec.get("type") else []
        if name in required:
            tags.append("required")
        text = f"{name} ({', '.join(tags)})" if tags else name
        if spec.get("description"):
            text += f": {str(spec['description']).strip().rstrip('.')}"
        parts.append(text)
    return "; ".join(parts)


def is_sentence(answer: str) -> bool:
    """Whether a final answer is prose (said as is) rather than a value ("The answer is 4.")."""
    text = answer.strip()
    if text.startswith(("[", "{", "#", '"')):
        return False  # a JSON value or a KG variable
    return (
        len(text.split()) >= SENTENCE_WORDS
        or (text[:1].isupper() and text.endswith((".", "!", "?")) and " " in text)
        or text.endswith(("。", "！", "？"))  # a sentence in a CJK script (no spaces, no capitals)
    )


def _tool_view(tool: ToolSpec) -> dict[str, str]:
    description = tool.description.strip()
    if description and not description.endswith((".", "!", "?")):
        description += "."
    return {"name": tool.name, "description": description, "arguments": describe_parameters(tool.parameters)}


def _is_final_tool(name: str) -> bool:
    return name.strip().lower() in FINISH_NAMES


class Aligner:
    """Picklable processor of the align step (the pure logic; see the module docstring)."""

    def __init__(
        self, config: AlignConfig, context: StepContext, book: dict[str, list[str]], cards: ToolCards | None = None
    ) -> None:
        self.config = config
        self.context = context
        self.phrases = PhraseBook(book, context.seed, context.step_id)
        self.cards = cards if cards is not None else load_cards()
        self.demands = [re.compile(p) for p in config.format_demands]
        self.languages = self.phrases.languages()

    def language_of(self, turns: list[Turn]) -> str | None:
        """The conversation's language, when the phrase book words some slot in it: the language
        of the first user turn (the task). CJK languages are told by script alone, so a book whose
        languages are all CJK never loads the language model."""
        if not self.languages:
            return None
        task = next((t.text for t in turns if t.role is Role.USER), "")
        language = detect_language(task, scripts_only=self.languages <= SCRIPT_LANGUAGES)
        return language if language in self.languages else None

    # -- the two shapes of output ------------------------------------------------------------

    def _sample(
        self, trajectory: Trajectory, messages: list[Message], derivation: str, tools: list[ToolSpec] | None = None
    ) -> Sample:
        return sample_of(
            trajectory, messages, kind=self.config.kind, derivation=derivation, context=self.context, tools=tools
        )

    def original_form(self, trajectory: Trajectory, derivation: str) -> Sample:
        """The trajectory as chat with its text untouched; formatted assistant turns are ``react``.
        The sample declares the environment's tool card (or the trajectory's own tools), so the
        text commands it supervises are calls to declared tools."""
        messages = []
        for turn in trajectory.turns:
            part = None
            if turn.role is Role.ASSISTANT:
                part = "react" if turn.tool_calls or has_markers(turn.text) else "prose"
            messages.append(message_of(turn, part))
        card = self.cards.card_for(trajectory)
        tools = card.tools_for(trajectory) if card is not None else None
        return self._sample(trajectory, messages, derivation, tools)

    def declared_tools(self, trajectory: Trajectory, card: ToolCard | None) -> list[ToolSpec]:
        """The tools an aligned sample declares: the card's (or the trajectory's own), without
        the final tools when final answers are prose."""
        finals = self.config.finals == "call"
        if card is None:
            tools = list(trajectory.tools)
            return tools if finals else [t for t in tools if not _is_final_tool(t.name)]
        tools = card.tools_for(trajectory, finals=finals)
        if not finals and card.own_tools:
            tools = [t for t in tools if not _is_final_tool(t.name)]
        return tools

    def aligned(self, trajectory: Trajectory) -> Sample:
        """The trajectory rewritten as natural chat; raises RecordError when it cannot be."""
        card = self.cards.card_for(trajectory)
        tools = self.declared_tools(trajectory, card)
        turns = list(trajectory.turns)
        source_system = None
        if turns and turns[0].role is Role.SYSTEM:
            source_system, turns = turns[0].text, turns[1:]
        if card is not None:
            turns = card.prompt_turns(turns)
        language = self.language_of(turns)
        builder = _ChatBuilder(
            self.phrases,
            trajectory.id,
            card,
            tools,
            self.config.finals,
            self.config.decision,
            self.config.style,
            language,
        )
        instruction = card.instruction_for(tools) if card is not None else ""
        parts = []
        if source_system is not None and (self.config.system == "keep" or not (tools or instruction)):
            parts.append(source_system)  # one system message: the source's, then the tools
        if self.config.style == "native" or not tools:  # native: the chat template renders the tools
            parts += [instruction] if instruction else []  # no tools: no tool list to announce
        else:
            parts.append(
                self.phrases.render(
                    "system_tools",
                    f"{trajectory.id}:system",
                    in_language=language,
                    tools=[_tool_view(t) for t in tools],
                    instruction=instruction,
                )
            )
        if parts:
            builder.messages.append(Message(role=Role.SYSTEM, content="\n\n".join(parts), loss=False))
        for index, turn in enumerate(turns):
            if turn.role is not Role.ASSISTANT:
                builder.add_observation(turn)
                continue
            try:
                steps = parse_turn(turn)
            except StepParseError as exc:
                raise RecordError("unparseable_step", f"turn {index}: {exc}: {exc.text[:500]!r}") from None
            if self.config.style == "native":
                try:
                    builder.add_turn_native(steps, turn, index)
                except ToolCardError as exc:
                    raise RecordError(exc.reason, f"turn {index}: {exc.detail}") from None
                continue
            for number, step in enumerate(steps):
                try:
                    builder.add_step(step, turn, f"{index}.{number}")
                except ToolCardError as exc:
                    raise RecordError(exc.reason, f"turn {index}: {exc.detail}") from None
        for index, message in enumerate(builder.messages):
            if message.role is Role.ASSISTANT and has_markers(message.content):
                raise RecordError(
                    "marker_in_output", f"aligned message {index} still holds a ReAct marker: {message.content[:500]!r}"
                )
            if message.role in (Role.SYSTEM, Role.USER) and self.demands_format(message.content):
                raise RecordError(
                    "format_in_instruction",
                    f"aligned message {index} ({message.role.value}) demands a format the targets do not follow: "
                    f"{message.content[:500]!r}",
                )
        return self._sample(trajectory, builder.messages, "align", tools=tools)

    def demands_format(self, text: str) -> bool:
        """Whether an instruction text demands an output format (a ReAct marker or a demand phrase)."""
        return has_markers(text) or any(p.search(text) for p in self.demands)

    def keeps_format(self, trajectory: Trajectory, thresholds: dict[str, RankKey | None] | None) -> bool:
        """Whether ``trajectory`` is in its source's kept-format share: its rank key is within the
        source's exact quota (``thresholds``, from the step's count of each source), or, when the
        processor is used alone without them, a keyed draw with probability ``share``."""
        share = self.config.keep_share_of(trajectory.source)
        if not share:
            return False
        key = f"keep_format:{trajectory.id}"
        if thresholds is None:
            return keyed_fraction(self.context.seed, self.context.step_id, key) < share
        threshold = thresholds.get(trajectory.source)
        return threshold is not None and rank_key(self.context.seed, self.context.step_id, key) <= threshold

    def __call__(self, trajectory: Trajectory, thresholds: dict[str, RankKey | None] | None = None) -> Iterator[Any]:
        source = trajectory.source
        yield Stat(f"in:{source}", 1)
        keep = self.keeps_format(trajectory, thresholds)
        try:
            try:
                sample = self.aligned(trajectory)  # kept-format trajectories pass the same checks
            except PhrasingError as exc:
                raise RecordError("template_error", str(exc)) from None
        except RecordError as exc:
            if self.config.on_unparseable == "dead_letter":
                if exc.reason in FILTER_REASONS:
                    yield Filtered(exc.reason, exc.detail)
                    return
                raise
            yield Stat("unaligned", 1)
            yield Stat(f"out:{source}", 1)
            yield self.original_form(trajectory, "unaligned")
            return
        yield Stat(f"out:{source}", 1)
        if keep:
            yield Stat("keep_format", 1)
            yield Stat(f"keep_format:{source}", 1)
            yield self.original_form(trajectory, "keep_format")
            return
        yield Stat("aligned", 1)
        yield Stat("tool_calls", sum(1 for m in sample.messages if m.part == "arguments"))
        yield sample


def quota_threshold(keys: Iterable[RankKey], share: float) -> RankKey | None:
    """The rank key at which a source's kept-format quota ends: the ``round(share * n)``
    lowest-ranked of its ``n`` trajectories are kept (nearest count; a half goes to keeping)."""
    ranked = [(key, 1.0) for key in keys]
    return prefix_threshold(ranked, share * len(ranked))[0]


def _arguments_json(arguments: Any) -> Deferred:
    """Compact JSON of a call's arguments, made only if the chosen variant prints it."""
    return Deferred(lambda: json.dumps(arguments, ensure_ascii=False))


def _arguments_pretty(arguments: Any) -> Deferred:
    """Indented JSON of a call's arguments (``json.dumps(indent=2)``'s bytes), made only if needed."""
    return Deferred(lambda: dumps_indented(arguments))


def check_arguments_text(content: str, call: ToolCall) -> None:
    """The run-time check of the guarantee that an ``arguments`` message's text parses to its
    call's arguments (a user phrase book can word the slot otherwise): raise ``RecordError``
    ``arguments_not_json`` when it does not."""
    try:
        parsed = json.loads(content)
    except (json.JSONDecodeError, RecursionError):
        parsed = _NOT_JSON
    if parsed is _NOT_JSON or parsed != call.arguments:
        raise RecordError(
            "arguments_not_json",
            f"the 'arguments' phrase rendered {content[:300]!r} for {call.name!r}, which does not parse to the "
            "call's arguments; an arguments variant must print only {{ arguments_json }} or {{ arguments_pretty }}",
        )


_NOT_JSON = object()


class _ChatBuilder:
    """Appends aligned messages and the neutral user turns between them (``decision`` mode).

    ``with_thought``: the thought and the decision (tool choice or answer) are consecutive
    assistant messages of one assistant turn; a neutral turn comes only before the arguments
    (after the model has named its tool) and between two steps of one source turn.
    ``after_continue``: a neutral turn comes between any two assistant messages. Either way the
    neutral turn's variant is a keyed hash of the trajectory and the position only, so it is
    independent of the part that follows."""

    def __init__(
        self,
        phrases: PhraseBook,
        trajectory_id: str,
        card: ToolCard | None,
        tools: list[ToolSpec],
        finals: str,
        decision: str = "with_thought",
        style: str = "agent_flan",
        language: str | None = None,
    ) -> None:
        self.phrases = phrases
        self.language = language
        self.trajectory_id = trajectory_id
        self.card = card
        self.tools = tools
        self.finals = finals
        self.decision = decision
        self.style = style
        self.messages: list[Message] = []
        self.calls = 0  # native: calls made so far (ids call_<n>)
        self.pending: list[ToolCall] = []  # native: calls of the last assistant message not yet answered

    def add_observation(self, turn: Turn) -> None:
        """A user or tool turn, text untouched. In native style the environment's answer to a
        call (the user or tool turn after the assistant message that made it) becomes a ``tool``
        message linked to that call (``tool_call_id``, ``name``)."""
        if self.style == "native" and self.pending:
            call = next((c for c in self.pending if c.id == turn.tool_call_id), self.pending[0])
            self.pending.remove(call)
            self.messages.append(
                Message(role=Role.TOOL, content=turn.text, loss=turn.loss, tool_call_id=call.id, name=call.name)
            )
            return
        self.messages.append(
            Message(role=turn.role, content=turn.text, loss=turn.loss, tool_call_id=turn.tool_call_id, name=turn.name)
        )

    def _with_id(self, call: ToolCall, source: ToolCall | None) -> ToolCall:
        """``call`` with the source call's id, or a fresh ``call_<n>``."""
        call_id = source.id if source is not None and source.id else f"call_{self.calls}"
        self.calls += 1
        return call.model_copy(update={"id": call_id})

    def add_turn_native(self, steps: list[ParsedStep], turn: Turn, index: int) -> None:
        """One source assistant turn as one native assistant message: its thoughts (and a final
        answer, in the phrase book's words) as content, its calls as structured ``tool_calls``.
        Several actions written in one text turn share one observation, which cannot be split
        between them: ``several_actions_in_a_turn`` (structured parallel calls stay together)."""
        actions = sum(1 for s in steps if s.call is not None)
        if actions > 1 and not turn.tool_calls:
            raise RecordError("several_actions_in_a_turn", f"turn {index}: {actions} actions share one observation")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for number, step in enumerate(steps):
            if step.thought:
                texts.append(step.thought.strip())
            if step.call is not None:
                calls.append(self._with_id(self._grounded(self._declared(step.call), turn.loss), step.call))
            elif step.finished:
                final = self._final(step, turn)
                if final is not None:
                    calls.append(self._with_id(self._grounded(final, turn.loss), None))
                else:
                    texts.append(self._answer_text(step, f"{index}.{number}"))
        self.messages.append(
            Message(role=Role.ASSISTANT, content="\n\n".join(t for t in texts if t), loss=turn.loss, tool_calls=calls)
        )
        self.pending = list(calls)

    def _needs_elicitation(self, part: str) -> bool:
        if self.style == "native" or not self.messages or self.messages[-1].role is not Role.ASSISTANT:
            return False
        if self.decision == "after_continue":
            return True
        return part == "arguments" or self.messages[-1].part in ("arguments", "answer")

    def _say(self, part: str, content: str, loss: bool, **extra: Any) -> None:
        if self._needs_elicitation(part):
            key = f"{self.trajectory_id}:{len(self.messages)}"
            question = self.phrases.render("elicit_continue", key, self.language)
            self.messages.append(Message(role=Role.USER, content=question, loss=False, part="elicit"))
        self.messages.append(Message(role=Role.ASSISTANT, content=content, loss=loss, part=part, **extra))

    def _declared(self, call: ToolCall) -> ToolCall:
        if self.card is not None:
            made = self.card.to_call(call, self.tools)
            return made if made.id is not None or call.id is None else made.model_copy(update={"id": call.id})
        validate_call(call, self.tools)
        return call

    def _final(self, step: ParsedStep, turn: Turn) -> ToolCall | None:
        """The final step as a call to a declared final tool, or None (then it is prose)."""
        if self.finals != "call":
            return None
        finish = next((c for c in turn.tool_calls if _is_final_tool(c.name)), None)
        if finish is not None:  # ToolBench's Finish
            return self._declared(finish)
        if self.card is None:
            return None
        return self.card.final_call(step.answer, self.tools)

    def _grounded(self, call: ToolCall, loss: bool) -> ToolCall:
        """``call``, unless it is supervised and sends to an email address no earlier message
        gives (:mod:`transforms.grounded_arguments`): then the trajectory is filtered
        ``ungrounded_argument``."""
        detail = ungrounded_call(call.name, call.arguments, (m.content for m in self.messages)) if loss else None
        if detail is not None:
            raise RecordError("ungrounded_argument", detail)
        return call

    def _call(self, call: ToolCall, loss: bool, key: str) -> None:
        self._grounded(call, loss)
        render = self.phrases.render
        name = call.name
        self._say("tool", render("tool", f"{self.trajectory_id}:{key}:tool", self.language, tool=name), loss)
        content = render(
            "arguments",
            f"{self.trajectory_id}:{key}:arguments",
            self.language,
            tool=name,
            arguments_json=_arguments_json(call.arguments),
            arguments_pretty=_arguments_pretty(call.arguments),
        )
        check_arguments_text(content, call)
        self._say("arguments", content, loss, tool_calls=[call])

    def add_step(self, step: ParsedStep, turn: Turn, key: str) -> None:
        loss = turn.loss
        if step.thought or step.is_prose:
            self._say("prose" if step.is_prose else "thought", step.thought or "", loss)
        if step.call is not None:
            self._call(self._declared(step.call), loss, key)
            return
        if not step.finished:
            return
        final = self._final(step, turn)
        if final is not None:
            self._call(final, loss, key)
        else:
            self._say("answer", self._answer_text(step, key), loss)

    def _answer_text(self, step: ParsedStep, key: str) -> str:
        """A final answer in the phrase book's words (a sentence as is, a value in a sentence,
        "The task is complete." for a finish without text)."""
        render, language = self.phrases.render, self.language
        if step.answer and is_sentence(step.answer):
            return render("answer_sentence", f"{self.trajectory_id}:{key}:answer", language, answer=step.answer.strip())
        if step.answer:
            bare = step.answer.strip().rstrip(".!?。！？") or step.answer
            return render(
                "answer", f"{self.trajectory_id}:{key}:answer", language, answer=step.answer.strip(), answer_bare=bare
            )
        return render("finish", f"{self.trajectory_id}:{key}:finish", language)


class Align(RecordStep):
    """Agent-FLAN format alignment (see the module docstring)."""

    type_name = "align"
    config_model = AlignConfig
    input_type = Trajectory
    output_type = Sample

    def book(self) -> dict[str, list[str]]:
        path = self.config.templates
        if path:
            user = parse_book(read_text(path, self.context.base_dir), path)
            removed = sorted(set(user) & set(REMOVED_SLOTS))
            if removed:
                reasons = "; ".join(f"{slot}: {REMOVED_SLOTS[slot]}" for slot in removed)
                raise PhrasingError(
                    f"{path}: slots {', '.join(removed)} no longer exist ({reasons}). The user turn between two "
                    "assistant messages is now one neutral pool, 'elicit_continue', used before every next part "
                    "alike; move neutral wordings there and delete these slots (docs/transforms/align.md)."
                )
        return load_book("align/default.yaml", path, self.context.base_dir, SLOT_VARIABLES, languages=True)

    def cards(self) -> ToolCards:
        try:
            return load_cards(self.config.tool_cards, self.context.base_dir)
        except CardFileError as exc:
            raise ValueError(f"tool cards: {exc}") from None

    def check(self) -> None:
        self.book()
        self.cards()

    def processor(self) -> Aligner:
        return Aligner(self.config, self.context, self.book(), self.cards())

    def expand(self, pcoll: beam.PCollection) -> dict[str, Any]:
        """Count, then select: the rank keys of the trajectories of sources with a kept-format
        share are gathered per source into exact quota thresholds, a side input of the ParDo;
        the trajectories wait for them behind a disk barrier (:class:`transforms.spill.Merge`)."""
        import apache_beam as beam

        from transforms.beam.records import RecordDoFn
        from transforms.spill import Merge

        config, seed, step_id = self.config, self.context.seed, self.step_id
        thresholds = (
            pcoll
            | "KeepFormatRanks"
            >> beam.FlatMap(
                lambda t: (
                    [(t.source, rank_key(seed, step_id, f"keep_format:{t.id}"))]
                    if config.keep_share_of(t.source)
                    else []
                )
            )
            | "PerSource" >> beam.GroupByKey()
            | "Thresholds"
            >> beam.MapTuple(lambda source, keys: (source, quota_threshold(keys, config.keep_share_of(source))))
        )
        # The trajectories wait for the thresholds on disk, not in the runner's memory (a ParDo
        # whose side input comes from its own input would hold the whole input there).
        waiting = pcoll | "AwaitThresholds" >> Merge(self.context.spill_dir("records"), Trajectory)
        outputs = waiting | "Process" >> beam.ParDo(
            RecordDoFn(self.processor(), self.step_id), thresholds=beam.pvalue.AsDict(thresholds)
        ).with_outputs(REJECTED, LEDGER, *self.extra_outputs, main=MAIN)
        return self._typed(outputs)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any] | None:
        assert isinstance(config, AlignConfig)
        stats = ledger.stats
        sources = sorted(k.split(":", 1)[1] for k in stats if k.startswith("out:"))
        total = sum(stats[f"out:{s}"] for s in sources)
        if not total:
            return None
        by_source = {}
        for source in sources:
            seen = stats[f"out:{source}"]
            by_source[source] = {
                "out": seen,
                "target": config.keep_share_of(source),
                "achieved": round(stats.get(f"keep_format:{source}", 0) / seen, 4),
            }
        expected = sum(config.keep_share_of(s) * stats[f"out:{s}"] for s in sources) / total
        return {
            "keep_format": {
                "target": round(expected, 4),
                "achieved": round(stats.get("keep_format", 0) / total, 4),
                "by_source": by_source,
            },
            "aligned": stats.get("aligned", 0),
            "unaligned": stats.get("unaligned", 0),
        }


__all__ = ["Align", "AlignConfig", "Aligner", "PhrasingError", "describe_parameters"]
