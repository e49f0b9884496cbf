"""Step ``instruction_pairs``: format-following samples that need format skill.

Agent-FLAN keeps the format skill apart from agent reasoning with instruction-following pairs
that ask for ReAct or JSON output (2,000 in the paper, the default ``count``). Each pair here is
a real conversation re-rendered in one format: the prompt declares the tools (names,
descriptions, JSON Schemas) and demands the format once, in the system message or in the user's
first turn (wording from ``templates/instruction_pairs/default.yaml``); the user's task follows;
every assistant turn of the conversation is a target in that format (a tool call, or a reply to
the user), and tool results come back as tool messages in between. Nothing of a target (its
thought, tool choice or arguments) is in the prompt: the model must work it out from the task.

Shapes (``metadata.shape``): ``single`` ends at the first tool call; ``multi`` continues the
conversation to its end (results, further calls, the final answer). ``multi_turn_share`` of the
pairs whose conversation goes on after the first call are ``multi`` (keyed hash).

Guarantees:

- exactly ``min(count, eligible trajectories)`` pairs, one per trajectory, chosen by a keyed-hash
  ranking (count, then select);
- every call names a tool declared in the pair (``sample.tools``, also described in the
  prompt) and its arguments validate against that tool's JSON Schema (``jsonschema``);
- every target parses back with the format's parser to the same step (ReAct: ``parse_turn``;
  JSON: ``json.loads`` to the same object), checked before emitting (a failure is a dead letter);
- failed episodes give no pairs (``failed_episode``): ``success is False`` (except for tasks in
  ``ignore_success_flag``, whose source does not record the flag, e.g. AgentGym's BabyAI), or a
  reward that is not above 0; the same rule as the audit's ``failed_episode`` check. Reward
  thresholds are ``reward_filter``'s job, before this step;
- each trajectory's conversation is read once (a screening pass that also ranks the eligible
  ones); only the drawn trajectories are read again, to build their pair;
- every input trajectory is emitted or filtered with a reason.

Declared tools are the trajectory's own (ToolBench, glaive). Sources whose actions are text
commands (AgentInstruct, FireAct) have no declared tools until a tool card gives them; without
one they are filtered ``no_declared_tools``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
from pydantic import Field

from schemas import Message, Role, Sample, ToolCall, ToolSpec, Trajectory, Turn
from schemas.tools import parameters_validator
from transforms.base import (
    LEDGER,
    MAIN,
    REJECTED,
    Filtered,
    RecordError,
    Stat,
    Step,
    StepConfig,
    StepContext,
)
from transforms.clean_outputs import action_match, builtin_rules, hidden_citations, premature_claim
from transforms.grounded_arguments import ungrounded_call
from transforms.phrasing import PhraseBook, PhrasingError, load_book
from transforms.react import FINISH_NAMES, ParsedStep, StepParseError, _finish_answer, has_markers, parse_turn
from transforms.samples import sample_of
from transforms.sampling import keyed_fraction, keyed_hash, rank_key
from transforms.tool_cards import ToolCardError, ToolCards, load_cards

if TYPE_CHECKING:
    import apache_beam as beam

Format = Literal["react", "json"]
Placement = Literal["system", "user"]
EXAMPLE_TOOLS = [{"name": "get_weather", "description": "Get the weather.", "parameters_json": '{"type": "object"}'}]
SLOT_VARIABLES: dict[str, dict[str, Any]] = {
    "react_rules": {},
    "json_rules": {},
    "system_with_format": {"tools": EXAMPLE_TOOLS, "rules": "Reply in JSON.", "instruction": "You answer questions."},
    "system_tools_only": {"tools": EXAMPLE_TOOLS, "instruction": ""},
    "user_with_format": {"task": "Weather in Oslo?", "rules": "Reply in JSON."},
}
#: A trajectory's screening: :data:`ELIGIBLE`, or the (reason, detail) it is filtered with.
Screening = tuple[str, str]
ELIGIBLE: Screening = ("", "")
RANKS = "ranks"
#: A line ToolBench appends to every task ("Begin!"), part of its own protocol, not the task.
TOOLBENCH_BEGIN = re.compile(r"\n\s*Begin!\s*$")
#: AgentInstruct's KG task after its in-context example ("A new question: ..."): a pair leaves
#: the example out, so the question is no longer a new one.
NEW_QUESTION = re.compile(r"^\s*A new question:\s*")
#: AgentInstruct's OS task after its in-context example ("Now, I will start a new problem in a new
#: OS. My problem is: ..."): the same pointer at a left-out example; the problem stays.
NEW_PROBLEM = re.compile(r"^\s*Now, I will start a new problem in a new OS\. My problem is:\s*")
#: ToolBench's depth-first search talks to the model in user turns ("This is not the first time
#: you try this task ..., previous actions candidates"): a search protocol, not a user.
SEARCH_PROTOCOL = re.compile(r"This is not the first time you try this task|previous actions candidates")


class InstructionPairsConfig(StepConfig):
    """Config of the ``instruction_pairs`` step (docs/transforms/instruction_pairs.md)."""

    count: int = Field(2000, ge=0)
    formats: list[Format] = Field(default_factory=lambda: ["react", "json"], min_length=1)
    placements: list[Placement] = Field(default_factory=lambda: ["system", "user"], min_length=1)
    multi_turn_share: float = Field(0.5, ge=0.0, le=1.0)
    balance_sources: bool = True
    #: Tasks whose ``success`` flag is not recorded by their source (always false), judged by
    #: their reward alone (as ``reward_filter`` and the audit's ``failed_episode`` options).
    ignore_success_flag: list[str] = Field(default_factory=list)
    tool_cards: str | None = None
    templates: str | None = None


@dataclass(frozen=True)
class PairStep:
    """One assistant turn as a target: a call (``call``) or a reply to the user (``answer``),
    with an optional thought."""

    thought: str | None
    call: ToolCall | None = None
    answer: str | None = None


@dataclass(frozen=True)
class Conversation:
    """A trajectory read for pairs: the task, the declared tools, the turns after the task as
    ``("user" | "tool", text)`` or ``("assistant", PairStep)``, and where the first call is."""

    task: str
    tools: tuple[ToolSpec, ...]
    events: tuple[tuple[str, Any], ...]
    first_call: int
    instruction: str = ""


class NotEligible(Exception):
    """A trajectory that gives no pair; ``reason`` is the filter reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def task_text(text: str) -> str:
    """The task of a pair: the user turn without ToolBench's "Begin!" line, and "A new question:"
    (which points at an in-context example the pair leaves out) said as "Question:"; OS's "Now,
    I will start a new problem in a new OS. My problem is:" (the same pointer) left out."""
    return NEW_PROBLEM.sub("", NEW_QUESTION.sub("Question: ", TOOLBENCH_BEGIN.sub("", text))).strip()


def _parsed(turn: Turn) -> list[ParsedStep]:
    try:
        return parse_turn(turn)
    except StepParseError as exc:
        raise NotEligible("unparseable_step", str(exc)) from None


def _own_step(turn: Turn) -> PairStep:
    """An assistant turn of a source with its own tool list (glaive, ToolBench)."""
    steps = _parsed(turn)
    if len(turn.tool_calls) > 1:
        raise NotEligible("several_steps_in_a_turn", f"{len(turn.tool_calls)} parallel calls in one assistant turn")
    if turn.tool_calls:
        return PairStep(thought=steps[0].thought if steps else None, call=turn.tool_calls[0])
    if len(steps) != 1:
        raise NotEligible("several_steps_in_a_turn", f"{len(steps)} steps in one assistant turn")
    (step,) = steps
    if step.call is not None:
        return PairStep(thought=step.thought, call=step.call)
    if step.finished:
        if step.answer is None:
            raise NotEligible("finished_without_answer", "the step finishes without an answer text")
        return PairStep(thought=step.thought, answer=step.answer)
    text = (step.thought or "").strip()
    if not text:
        raise NotEligible("empty_reply", "an assistant turn without text or call")
    return PairStep(thought=None, answer=text)


def _card_step(turn: Turn, card: Any, tools: list[ToolSpec]) -> PairStep:
    """An assistant turn of a text-command environment, its action as a call to a declared tool
    of the environment's tool card (final steps too, when the card declares a final tool)."""
    steps = _parsed(turn)
    if len(steps) != 1:
        raise NotEligible("several_steps_in_a_turn", f"{len(steps)} steps in one assistant turn")
    (step,) = steps
    try:
        if step.call is not None:
            return PairStep(thought=step.thought, call=card.to_call(step.call, tools))
        if step.finished:
            call = card.final_call(step.answer, tools)
            if call is not None:
                return PairStep(thought=step.thought, call=call)
            if step.answer is None:
                raise NotEligible("finished_without_answer", "the step finishes without an answer text")
            return PairStep(thought=step.thought, answer=step.answer)
    except ToolCardError as exc:
        raise NotEligible(exc.reason, exc.detail) from None
    raise NotEligible("step_without_action", "an environment step with a thought and no action")


def check_call(call: ToolCall, tools: dict[str, ToolSpec]) -> None:
    """Raise :class:`NotEligible` unless ``call`` names a declared tool and its arguments
    validate against the tool's JSON Schema."""
    tool = tools.get(call.name)
    if tool is None:
        raise NotEligible("undeclared_tool", f"call to {call.name!r}, not among {sorted(tools)}")
    if call.name.lower() in FINISH_NAMES:
        arguments = call.arguments if isinstance(call.arguments, dict) else {}
        if ("final_answer" in arguments or "return_type" in arguments) and _finish_answer(arguments) is None:
            raise NotEligible("gives_up", "the episode ends by giving up")
    validator = parameters_validator(tool.parameters or {"type": "object"}, forbid_extra=False, draft7_by_default=False)
    if isinstance(validator, str):
        raise NotEligible("invalid_tool_schema", f"{call.name}: {validator}")
    error = jsonschema.exceptions.best_match(validator.iter_errors(call.arguments))
    if error is not None:
        raise NotEligible("arguments_fail_schema", f"{call.name}: {error.message}")


def _clean(step: PairStep) -> PairStep:
    if step.thought and has_markers(step.thought):
        raise NotEligible("markers_in_thought", step.thought[:300])
    if step.answer is not None and has_markers(step.answer):
        raise NotEligible("markers_in_answer", step.answer[:300])
    return step


def failure(trajectory: Trajectory, ignore_success_flag: Collection[str] = ()) -> str | None:
    """Why the trajectory's episode counts as failed, or ``None``: its ``success`` flag is false
    (unless its task is in ``ignore_success_flag``), or its reward is 0 or below."""
    if trajectory.success is False and (trajectory.task or "") not in ignore_success_flag:
        return "the source marks the episode as failed"
    if trajectory.reward is not None and trajectory.reward <= 0:
        return f"reward {trajectory.reward:g}"
    return None


def read_conversation(
    trajectory: Trajectory, cards: ToolCards | None = None, ignore_success_flag: Collection[str] = ()
) -> Conversation:
    """The trajectory as a conversation for pairs, or :class:`NotEligible` with the reason.

    Declared tools: the tool card of the trajectory's environment when it has one that declares
    tools (AgentInstruct, FireAct; the environment's format prompt is removed with the card's
    rules), else the trajectory's own tools. The task is the user turn before the first
    supervised assistant turn (earlier turns, such as in-context examples, are left out); a user
    turn right after a call is that call's result (a tool message)."""
    failed = failure(trajectory, ignore_success_flag)
    if failed is not None:
        raise NotEligible("failed_episode", failed)
    card = cards.card_for(trajectory) if cards is not None else None
    if card is not None and not card.own_tools:
        tools = card.tools_for(trajectory, finals=True)
        turns = card.prompt_turns(list(trajectory.turns))
        instruction = card.instruction
    else:
        card = None
        tools = list(trajectory.tools)
        turns = [t for t in trajectory.turns if t.role is not Role.SYSTEM]
        instruction = ""
    if not tools:
        raise NotEligible("no_declared_tools", "the trajectory declares no tools and has no tool card")
    by_name = {t.name: t for t in tools}
    first = next((i for i, t in enumerate(turns) if t.role is Role.ASSISTANT and t.loss), None)
    start = next((i for i in range(first - 1, -1, -1) if turns[i].role is Role.USER), None) if first else None
    if start is None or not turns[start].text.strip():
        raise NotEligible("no_task", "no user turn before the first supervised assistant turn")
    events: list[tuple[str, Any]] = []
    first_call = -1
    earlier = [turns[start].text]
    for turn in turns[start + 1 :]:
        if turn.role is Role.ASSISTANT:
            if not turn.loss:
                raise NotEligible("unsupervised_turn", "an assistant turn the source does not supervise")
            step = _clean(_card_step(turn, card, tools) if card is not None else _own_step(turn))
            if step.call is not None:
                check_call(step.call, by_name)
                detail = ungrounded_call(step.call.name, step.call.arguments, earlier)
                if detail is not None:
                    raise NotEligible("ungrounded_argument", detail)
                if first_call < 0:
                    first_call = len(events)
            events.append(("assistant", step))
        elif turn.role is Role.TOOL or (
            turn.role is Role.USER and events and events[-1][0] == "assistant" and events[-1][1].call is not None
        ):
            events.append(("tool", turn.observation or turn.text))
        else:
            if SEARCH_PROTOCOL.search(turn.text):
                raise NotEligible("search_protocol_turn", "a user turn of ToolBench's tree search, not of the user")
            events.append(("user", turn.text))
        earlier.append(turn.text)
    if first_call < 0:
        raise NotEligible("no_tool_call", "no assistant turn calls a tool")
    for kind, step in events:
        if kind == "assistant":
            for fmt in ("react", "json"):
                try:
                    check_format(step, fmt, render_step(step, fmt))
                except RecordError as exc:
                    raise NotEligible("format_unparseable", exc.detail) from None
    while events and events[-1][0] != "assistant":
        events.pop()
    return Conversation(task_text(turns[start].text), tuple(tools), tuple(events), first_call, instruction)


def render_step(step: PairStep, fmt: str) -> str:
    """``step`` in ``fmt``: ReAct lines or one JSON object (see the module docstring).

    In ReAct a call to a final tool named ``answer`` (DB, OS cards) is written as the protocol's
    own ``Final Answer: <text>`` line: ``Action: answer`` is the DB dialect's marker for that
    line, so the parser would not read it as a call."""
    if fmt == "react":
        lines = [f"Thought: {step.thought}"] if step.thought else []
        final_text = _react_final_text(step)
        if final_text is not None:
            lines.append(f"Final Answer: {final_text}")
        elif step.call is not None:
            lines += [
                f"Action: {step.call.name}",
                f"Action Input: {json.dumps(step.call.arguments, ensure_ascii=False)}",
            ]
        else:
            lines.append(f"Final Answer: {step.answer}")
        return "\n".join(lines)
    value: dict[str, Any] = {"thought": step.thought} if step.thought else {}
    if step.call is not None:
        value.update(tool=step.call.name, arguments=step.call.arguments)
    else:
        value["answer"] = step.answer
    return json.dumps(value, ensure_ascii=False)


def _react_final_text(step: PairStep) -> str | None:
    if step.call is not None and step.call.name.lower() == "answer":
        return _finish_answer(step.call.arguments)
    return None


def same_call(a: ToolCall, b: ToolCall) -> bool:
    """Whether two calls name the same tool with the same arguments (a call id is the source's
    bookkeeping, not something a target writes)."""
    return a.name == b.name and a.arguments == b.arguments


def check_format(step: PairStep, fmt: str, text: str) -> None:
    """Raise RecordError unless ``text`` parses with the format's parser back to ``step``."""
    if fmt == "react":
        try:
            parsed = parse_turn(Turn(role=Role.ASSISTANT, text=text, loss=True))
        except (StepParseError, ValueError) as exc:
            raise RecordError("format_check_failed", f"ReAct target does not parse: {exc}") from None
        ok = len(parsed) == 1 and parsed[0].thought == step.thought
        if ok and step.call is not None and step.call.name.lower() in FINISH_NAMES:
            expected = _finish_answer(step.call.arguments)
            ok = parsed[0].finished and parsed[0].answer == (expected.strip() if expected is not None else None)
        elif ok and step.call is not None:
            ok = parsed[0].call is not None and same_call(parsed[0].call, step.call)
        elif ok:
            ok = parsed[0].finished and parsed[0].answer == (step.answer or "").strip()
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError("format_check_failed", f"JSON target does not parse: {exc}") from None
        ok = value == json.loads(render_step(step, "json"))
    if not ok:
        raise RecordError("format_check_failed", f"{fmt} target does not hold the step: {text[:300]!r}")


def _tool_view(tool: ToolSpec) -> dict[str, str]:
    return {
        "name": tool.name,
        "description": tool.description.strip(),
        "parameters_json": json.dumps(tool.parameters or {"type": "object"}, ensure_ascii=False),
    }


class PairMaker:
    """Picklable processor: the pair of a selected trajectory."""

    def __init__(
        self,
        config: InstructionPairsConfig,
        context: StepContext,
        book: dict[str, list[str]],
        cards: ToolCards | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.phrases = PhraseBook(book, context.seed, context.step_id)
        self.cards = cards
        self._selected_list: list[str] | None = None
        self._selected: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_selected_list": None, "_selected": set()}

    def _choice(self, what: str, options: list[str], key: str) -> str:
        return options[keyed_hash(self.context.seed, self.context.step_id, f"{what}:{key}") % len(options)]

    def pair(self, trajectory: Trajectory, conversation: Conversation) -> Sample:
        """The pair of ``trajectory`` (format, placement and shape by keyed hash)."""
        key = trajectory.id
        fmt = self._choice("format", list(self.config.formats), key)
        placement = self._choice("placement", list(self.config.placements), key)
        goes_on = any(kind == "assistant" for kind, _ in conversation.events[conversation.first_call + 1 :])
        multi = goes_on and keyed_fraction(self.context.seed, self.context.step_id, f"shape:{key}") < (
            self.config.multi_turn_share
        )
        events = conversation.events if multi else conversation.events[: conversation.first_call + 1]
        tools = [_tool_view(t) for t in conversation.tools]
        rules = self.phrases.render(f"{fmt}_rules", key)
        if placement == "system":
            system = self.phrases.render(
                "system_with_format", key, tools=tools, rules=rules, instruction=conversation.instruction
            )
            first_user = conversation.task
        else:
            system = self.phrases.render("system_tools_only", key, tools=tools, instruction=conversation.instruction)
            first_user = self.phrases.render("user_with_format", key, task=conversation.task, rules=rules)
        messages = [
            Message(role=Role.SYSTEM, content=system, loss=False),
            Message(role=Role.USER, content=first_user, loss=False),
        ]
        for kind, value in events:
            if kind == "assistant":
                text = render_step(value, fmt)
                check_format(value, fmt, text)
                messages.append(Message(role=Role.ASSISTANT, content=text, loss=True, part="react"))
            elif kind == "tool":
                messages.append(Message(role=Role.TOOL, content=value, loss=False))
            else:
                messages.append(Message(role=Role.USER, content=value, loss=False))
        shape = "multi" if multi else "single"
        return sample_of(
            trajectory,
            messages,
            kind="instruction",
            derivation=f"instruction_pair:{fmt}",
            context=self.context,
            tools=list(conversation.tools),
            metadata={"format": fmt, "placement": placement, "shape": shape},
        )

    def read(self, trajectory: Trajectory) -> Conversation:
        """:func:`read_conversation` with this step's cards and success rule."""
        return read_conversation(trajectory, self.cards, self.config.ignore_success_flag)

    def screen(self, trajectory: Trajectory) -> Screening:
        """:data:`ELIGIBLE`, or the (reason, detail) of the filter the trajectory falls under.

        A trajectory whose agent outputs cite context the conversation never shows (the
        ``hidden_context`` rule of its task in ``clean_outputs``' built-in rules: AgentBench OS
        thoughts that follow "the hints", DB thoughts that quote BIRD's "evidence") gives no
        pair (``hidden_context``): its steps rest on what the model would not see. Nor does one
        whose first output claims the outcome of what it is about to run (the task's
        ``premature_claim`` rule: "Record inserted successfully." before the INSERT), nor one
        with an action the environment cannot run as written (``malformed_action``: a MySQL
        column qualified inside one pair of backticks)."""
        try:
            self.read(trajectory)
        except NotEligible as exc:
            return exc.reason, exc.detail
        return output_rules_screening(trajectory)

    def __call__(
        self, trajectory: Trajectory, selected: list[str], screening: Screening | None = None
    ) -> Iterator[Any]:
        """The pair of ``trajectory`` when it is drawn, else the filter reason. ``screening`` is
        the trajectory's :meth:`screen` result when the caller has it (the step's screening
        pass): then only a drawn trajectory is read again."""
        if selected is not self._selected_list:
            self._selected_list, self._selected = selected, set(selected)
        if screening is None:
            screening = self.screen(trajectory)
        if screening != ELIGIBLE:
            yield Filtered(*screening)
            return
        if trajectory.id not in self._selected:
            yield Filtered("not_selected", "eligible trajectory, not drawn", keep_payload=False)
            return
        try:
            conversation = self.read(trajectory)
        except NotEligible as exc:  # not reached: screened eligible, and reading is deterministic
            yield Filtered(exc.reason, exc.detail)
            return
        try:
            sample = self.pair(trajectory, conversation)
        except PhrasingError as exc:
            raise RecordError("template_error", str(exc)) from None
        metadata = sample.metadata
        yield Stat(f"format:{metadata['format']}", 1)
        yield Stat(f"shape:{metadata['shape']}", 1)
        yield Stat(f"placement:{metadata['placement']}", 1)
        yield Stat(f"source:{trajectory.source}", 1)
        yield sample


def _output_turns(trajectory: Trajectory) -> list[tuple[bool, str]]:
    """``(supervised agent output, text)`` of every turn, as ``clean_outputs``' rules read them."""
    return [(t.role is Role.ASSISTANT and t.loss, t.text) for t in trajectory.turns]


def hidden_citation(trajectory: Trajectory) -> str | None:
    """Why the trajectory's agent outputs rest on context the conversation never shows (the
    ``hidden_context`` rule of its task in ``clean_outputs``' built-in rules), or ``None``."""
    rules = builtin_rules().get(trajectory.task or "")
    citing = (
        set() if rules is None or rules.hidden is None else hidden_citations(rules.hidden, _output_turns(trajectory))
    )
    return f"turn {min(citing)} cites context the conversation never shows" if citing else None


def claimed_too_early(trajectory: Trajectory) -> str | None:
    """Why the trajectory's first agent output claims an outcome before anything ran (the
    ``premature_claim`` rule of its task in ``clean_outputs``' built-in rules), or ``None``."""
    rules = builtin_rules().get(trajectory.task or "")
    turns = _output_turns(trajectory)
    index = None if rules is None or rules.premature is None else premature_claim(rules.premature, turns)
    return None if index is None else f"turn {index} claims an outcome before anything ran: {turns[index][1][:200]!r}"


def malformed_output(trajectory: Trajectory) -> str | None:
    """Why one of the trajectory's agent outputs is an action the environment cannot run as
    written (the ``malformed_action`` rule of its task in ``clean_outputs``' built-in rules), or
    ``None``."""
    rules = builtin_rules().get(trajectory.task or "")
    pattern = None if rules is None else rules.malformed
    if pattern is None:
        return None
    for index, turn in enumerate(trajectory.turns):
        if turn.role is Role.ASSISTANT and turn.loss:
            found = action_match(pattern, turn.text, turn.tool_calls)
            if found is not None:
                return f"turn {index} is an action the environment cannot run as written: {found.group(0)!r}"
    return None


def output_rules_screening(trajectory: Trajectory) -> Screening:
    """:data:`ELIGIBLE`, or ``hidden_context`` / ``premature_claim`` / ``malformed_action`` with the
    detail: the trajectory's outputs break a ``clean_outputs`` rule that would take them out of
    the loss."""
    hidden = hidden_citation(trajectory)
    if hidden is not None:
        return "hidden_context", hidden
    claim = claimed_too_early(trajectory)
    if claim is not None:
        return "premature_claim", claim
    malformed = malformed_output(trajectory)
    if malformed is not None:
        return "malformed_action", malformed
    return ELIGIBLE


def eligible(trajectory: Trajectory, cards: ToolCards | None = None, ignore_success_flag: Collection[str] = ()) -> bool:
    """Whether the trajectory can give a pair (the step's screening, without the reason)."""
    try:
        read_conversation(trajectory, cards, ignore_success_flag)
    except NotEligible:
        return False
    return output_rules_screening(trajectory) == ELIGIBLE


def draw_rank(
    trajectory: Trajectory, seed: int, step_id: str, balance: bool
) -> tuple[str, tuple[tuple[int, str], str]]:
    """The draw's ``(group, (rank key, id))`` of an eligible ``trajectory``: its source's group
    when sources are balanced, else the one group ``""``."""
    return (trajectory.source if balance else ""), (rank_key(seed, step_id, trajectory.id), trajectory.id)


def _candidate_ranks(
    trajectory: Trajectory,
    seed: int,
    step_id: str,
    cards: ToolCards | None,
    balance: bool,
    ignore_success_flag: Collection[str] = (),
) -> Iterable[tuple[str, tuple[tuple[int, str], str]]]:
    """The draw's ``(group, (rank key, id))`` of an eligible trajectory (nothing otherwise)."""
    if eligible(trajectory, cards, ignore_success_flag):
        yield draw_rank(trajectory, seed, step_id, balance)


def allocate(ranked: dict[str, list[tuple[tuple[int, str], str]]], count: int) -> list[str]:
    """The selected keys: ``count`` split as evenly as possible over the groups (water-filling:
    a group with fewer candidates than its share gives all it has, the rest go to the others;
    remainders to groups in name order), each group taking its smallest rank keys. Exactly
    ``min(count, candidates)`` keys, sorted."""
    sizes = {group: len(keys) for group, keys in ranked.items()}
    quota = dict.fromkeys(sizes, 0)
    left = count
    active = sorted(group for group, size in sizes.items() if size > 0)
    while left > 0 and active:
        per, extra = divmod(left, len(active))
        for index, group in enumerate(active):
            give = min(sizes[group] - quota[group], per + (1 if index < extra else 0))
            quota[group] += give
            left -= give
        active = [group for group in active if quota[group] < sizes[group]]
    return sorted(key for group, keys in ranked.items() for _, key in sorted(keys)[: quota[group]])


class InstructionPairs(Step):
    """Format-following pairs from real conversations (see the module docstring)."""

    type_name = "instruction_pairs"
    config_model = InstructionPairsConfig
    input_type = Trajectory
    output_type = Sample

    def book(self) -> dict[str, list[str]]:
        return load_book("instruction_pairs/default.yaml", self.config.templates, self.context.base_dir, SLOT_VARIABLES)

    def cards(self) -> ToolCards:
        return load_cards(self.config.tool_cards, self.context.base_dir)

    def maker(self) -> PairMaker:
        return PairMaker(self.config, self.context, self.book(), self.cards())

    def check(self) -> None:
        self.book()
        self.cards()

    def expand(self, trajectories: beam.PCollection) -> dict[str, Any]:
        import apache_beam as beam

        from transforms.beam.instruction_pairs import SCREENED, Screen, ScreenedRecordDoFn
        from transforms.beam.singletons import combined_singleton
        from transforms.spill import Merge

        step_id, count = self.context.step_id, self.config.count
        maker = self.maker()
        screened = trajectories | "Screen" >> beam.ParDo(Screen(maker, self.config.balance_sources)).with_outputs(
            RANKS, main=MAIN
        )
        screened[MAIN].element_type = SCREENED
        if count == 0:
            selected = beam.pvalue.AsSingleton(trajectories.pipeline | "NoDraw" >> beam.Create([[]]))
        else:
            selected = combined_singleton(
                screened[RANKS] | "Draw" >> beam.combiners.Top.SmallestPerKey(count),
                beam.combiners.ToDictCombineFn(),
                "Groups",
                then=functools.partial(allocate, count=count),
                then_label="Keys",
            )
        # The screened trajectories wait for the draw on disk, not in the runner's memory.
        waiting = screened[MAIN] | "AwaitDraw" >> Merge(self.context.spill_dir("records"), SCREENED)
        outputs = waiting | "Pairs" >> beam.ParDo(ScreenedRecordDoFn(maker, step_id), selected=selected).with_outputs(
            REJECTED, LEDGER, main=MAIN
        )
        return self._typed(outputs)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any] | None:
        assert isinstance(config, InstructionPairsConfig)

        def group(prefix: str) -> dict[str, int]:
            return {k.split(":", 1)[1]: v for k, v in ledger.stats.items() if k.startswith(prefix)}

        return {
            "target_count": config.count,
            "emitted": ledger.emitted,
            "by_format": group("format:"),
            "by_shape": group("shape:"),
            "by_placement": group("placement:"),
            "by_source": group("source:"),
        }
