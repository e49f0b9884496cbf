"""Step ``align``: Agent-FLAN format alignment, Trajectory -> Sample.

Each ReAct / JSON agent step becomes natural multi-turn chat: the thought is plain assistant
prose; the tool choice and the arguments are their own assistant turns, each elicited by a short
user turn; a final answer is plain prose; observations stay as they were (user or tool turns).
Tools are described in a natural-language system message. All wording comes from the phrase
book ``templates/align/default.yaml`` (or a user's file), one variant chosen per use by a keyed
hash, so it is deterministic but not one sentence repeated.

Guarantees:
- generated assistant turns keep the loss flag of the source turn (the in-context example and
  other loss=false turns stay loss=false); elicitation turns are never supervised;
- every source tool call appears as a ``tool`` turn naming the tool followed by an
  ``arguments`` turn whose text parses to the same JSON value (and carries the call);
- no aligned assistant message contains a ReAct marker; a turn that cannot be parsed, or whose
  rewrite would still hold a marker, dead-letters the trajectory with the offending text, or
  keeps it unaligned when ``on_unparseable: keep_unaligned``;
- a deterministic share ``keep_format_share`` of trajectories (default 10 %) stays in its
  original ReAct form (derivation ``keep_format``) so the format skill is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field

from schemas import Message, Role, Sample, SampleKind, ToolSpec, Trajectory
from transforms.base import RecordError, RecordStep, Stat, StepConfig, StepContext
from transforms.phrasing import PhraseBook, PhrasingError, load_book
from transforms.react import ParsedStep, StepParseError, has_markers, parse_turn
from transforms.samples import sample_of
from transforms.sampling import keyed_fraction

EXAMPLE_TOOL = {"name": "get_weather", "description": "Weather of a city.", "arguments": "city (string, required)"}
#: Every slot of the align phrase book and the variables it gets at run time (example values,
#: used to render each variant once before the run).
SLOT_VARIABLES: dict[str, dict[str, Any]] = {
    "system_tools": {"tools": [EXAMPLE_TOOL]},
    "elicit_tool": {"tool": "get_weather"},
    "tool": {"tool": "get_weather"},
    "elicit_arguments": {"tool": "get_weather"},
    "arguments": {
        "tool": "get_weather",
        "arguments_json": '{"city":"Oslo"}',
        "arguments_pretty": '{\n  "city": "Oslo"\n}',
    },
    "elicit_answer": {"tool": ""},
    "answer": {"answer": "42.", "answer_bare": "42"},
    "answer_sentence": {"answer": "It snows in Oslo."},
    "finish": {},
    "elicit_continue": {"tool": ""},
}
SENTENCE_WORDS = 6


class AlignConfig(StepConfig):
    keep_format_share: float = Field(0.1, ge=0.0, le=1.0)
    templates: str | None = None
    on_unparseable: Literal["dead_letter", "keep_unaligned"] = "dead_letter"
    system: Literal["replace", "keep"] = "replace"
    kind: SampleKind = "agent"


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
            text += f": {spec['description']}"
        parts.append(text)
    return "; ".join(parts)


def is_sentence(answer: str) -> bool:
    """Whether a final answer is prose (said as is) rather than a value ("The answer is 4.")."""
    text = answer.strip()
    if text.startswith(("[", "{", "#", '"')):
        return False  # a JSON value or a KG variable
    return len(text.split()) >= SENTENCE_WORDS or (
        text[:1].isupper() and text.endswith((".", "!", "?")) and " " in text
    )


def _tool_view(tool: ToolSpec) -> dict[str, str]:
    description = tool.description.strip()
    if description and not description.endswith((".", "!", "?")):
        description += "."
    return {"name": tool.name, "description": description, "arguments": describe_parameters(tool.parameters)}


class Aligner:
    """Picklable processor of the align step (the pure logic; see the module docstring)."""

    def __init__(self, config: AlignConfig, context: StepContext, book: dict[str, list[str]]) -> None:
        self.config = config
        self.context = context
        self.phrases = PhraseBook(book, context.seed, context.step_id)

    # -- the two shapes of output ------------------------------------------------------------

    def _sample(self, trajectory: Trajectory, messages: list[Message], derivation: str) -> Sample:
        return sample_of(trajectory, messages, kind=self.config.kind, derivation=derivation, context=self.context)

    def original_form(self, trajectory: Trajectory, derivation: str) -> Sample:
        """The trajectory as chat with its text untouched; formatted assistant turns are ``react``."""
        messages = []
        for turn in trajectory.turns:
            part = None
            if turn.role is Role.ASSISTANT:
                part = "react" if turn.tool_call is not None or has_markers(turn.text) else "prose"
            messages.append(
                Message(role=turn.role, content=turn.text, loss=turn.loss, tool_call=turn.tool_call, part=part)
            )
        return self._sample(trajectory, messages, derivation)

    def aligned(self, trajectory: Trajectory) -> Sample:
        """The trajectory rewritten as natural chat; raises RecordError when it cannot be."""
        builder = _ChatBuilder(self.phrases, trajectory.id)
        turns = list(trajectory.turns)
        if trajectory.tools:
            system = self.phrases.render(
                "system_tools", f"{trajectory.id}:system", tools=[_tool_view(t) for t in trajectory.tools]
            )
            if self.config.system == "keep" and turns and turns[0].role is Role.SYSTEM:
                system = f"{turns[0].text}\n\n{system}"  # one system message: the source's, then the tools
                turns = turns[1:]
            builder.messages.append(Message(role=Role.SYSTEM, content=system, loss=False))
        for index, turn in enumerate(turns):
            if turn.role is Role.SYSTEM and trajectory.tools and self.config.system == "replace":
                continue
            if turn.role is not Role.ASSISTANT:
                builder.messages.append(Message(role=turn.role, content=turn.text, loss=turn.loss))
                continue
            try:
                steps = parse_turn(turn)
            except StepParseError as exc:
                raise RecordError("unparseable_step", f"turn {index}: {exc}: {exc.text[:500]!r}") from None
            for number, step in enumerate(steps):
                builder.add_step(step, turn.loss, f"{index}.{number}")
        for index, message in enumerate(builder.messages):
            if message.role is Role.ASSISTANT and has_markers(message.content):
                raise RecordError(
                    "marker_in_output", f"aligned message {index} still holds a ReAct marker: {message.content[:500]!r}"
                )
        return self._sample(trajectory, builder.messages, "align")

    def __call__(self, trajectory: Trajectory) -> Iterator[Any]:
        share = self.config.keep_format_share
        if share and keyed_fraction(self.context.seed, self.context.step_id, f"keep_format:{trajectory.id}") < share:
            yield Stat("keep_format", 1)
            yield self.original_form(trajectory, "keep_format")
            return
        try:
            try:
                sample = self.aligned(trajectory)
            except PhrasingError as exc:
                raise RecordError("template_error", str(exc)) from None
        except RecordError:
            if self.config.on_unparseable == "dead_letter":
                raise
            yield Stat("unaligned", 1)
            yield self.original_form(trajectory, "unaligned")
            return
        yield Stat("aligned", 1)
        yield Stat("tool_calls", sum(1 for m in sample.messages if m.part == "arguments"))
        yield sample


class _LazyJson:
    """JSON text made only if a template prints it (each variant uses one of the two forms)."""

    __slots__ = ("indent", "value")

    def __init__(self, value: Any, indent: int | None = None) -> None:
        self.value = value
        self.indent = indent

    def __str__(self) -> str:
        return json.dumps(self.value, ensure_ascii=False, indent=self.indent)


class _ChatBuilder:
    """Appends aligned messages, inserting an elicitation turn between two assistant messages."""

    ELICIT_FOR: ClassVar[dict[str, str]] = {
        "tool": "elicit_tool",
        "arguments": "elicit_arguments",
        "answer": "elicit_answer",
    }

    def __init__(self, phrases: PhraseBook, trajectory_id: str) -> None:
        self.phrases = phrases
        self.trajectory_id = trajectory_id
        self.messages: list[Message] = []

    def _say(self, part: str, content: str, loss: bool, key: str, tool: str = "", **extra: Any) -> None:
        if self.messages and self.messages[-1].role is Role.ASSISTANT:
            slot = self.ELICIT_FOR.get(part, "elicit_continue")
            question = self.phrases.render(slot, f"{self.trajectory_id}:{key}:{part}", tool=tool)
            self.messages.append(Message(role=Role.USER, content=question, loss=False, part="elicit"))
        self.messages.append(Message(role=Role.ASSISTANT, content=content, loss=loss, part=part, **extra))

    def add_step(self, step: ParsedStep, loss: bool, key: str) -> None:
        render = self.phrases.render
        if step.thought or step.is_prose:
            self._say("prose" if step.is_prose else "thought", step.thought or "", loss, key)
        if step.call is not None:
            name = step.call.name
            arguments_json = _LazyJson(step.call.arguments)
            arguments_pretty = _LazyJson(step.call.arguments, indent=2)
            self._say("tool", render("tool", f"{self.trajectory_id}:{key}:tool", tool=name), loss, key, tool=name)
            content = render(
                "arguments",
                f"{self.trajectory_id}:{key}:arguments",
                tool=name,
                arguments_json=arguments_json,
                arguments_pretty=arguments_pretty,
            )
            self._say("arguments", content, loss, key, tool=name, tool_call=step.call)
        elif step.finished:
            if step.answer and is_sentence(step.answer):
                content = render("answer_sentence", f"{self.trajectory_id}:{key}:answer", answer=step.answer.strip())
            elif step.answer:
                bare = step.answer.strip().rstrip(".!?") or step.answer
                content = render(
                    "answer", f"{self.trajectory_id}:{key}:answer", answer=step.answer.strip(), answer_bare=bare
                )
            else:
                content = render("finish", f"{self.trajectory_id}:{key}:finish")
            self._say("answer", content, loss, key)


class Align(RecordStep):
    """Agent-FLAN format alignment (see the module docstring)."""

    type_name = "align"
    config_model = AlignConfig
    input_type = Trajectory
    output_type = Sample

    def book(self) -> dict[str, list[str]]:
        return load_book("align/default.yaml", self.config.templates, self.context.base_dir, SLOT_VARIABLES)

    def check(self) -> None:
        self.book()

    def processor(self) -> Aligner:
        return Aligner(self.config, self.context, self.book())

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any] | None:
        stats = ledger.stats
        total = stats.get("aligned", 0) + stats.get("keep_format", 0) + stats.get("unaligned", 0)
        if not total:
            return None
        return {
            "keep_format": {
                "target": config.keep_format_share,
                "achieved": round(stats.get("keep_format", 0) / total, 4),
            },
            "aligned": stats.get("aligned", 0),
            "unaligned": stats.get("unaligned", 0),
        }


__all__ = ["Align", "AlignConfig", "Aligner", "PhrasingError", "describe_parameters"]
