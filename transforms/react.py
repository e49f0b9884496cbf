"""Parsing agent steps: one assistant turn -> thought, tool call, final answer.

One parser covers every dialect in METHOD.md by the shape of the action, not by source name:

- markers at line starts: ``Thought:`` / ``THOUGHT:`` / ``Think:``, ``Action:`` / ``ACTION:`` /
  ``Act:``, ``Action Input:``, ``Final Answer:``, ``Answer:`` and ``Value:`` (Mind2Web),
  ``Invalid Action:`` (KG); text before the first marker is thought prose (the DB dialect);
- the action: ``name`` + ``Action Input: {json}`` (ToolBench, generic ReAct), ``bash`` /
  ``Operation`` + a fenced code block (OS, DB), ``name[arg]`` (WebShop, FireAct), ``name(arg)``
  (KG, OS ``answer(...)``), a free-text command whose verb is the tool (ALFWorld, BabyAI,
  TextCraft: ``go to desk 1`` -> ``go to`` with ``{"target": "desk 1"}``), Mind2Web's
  ``Answer: C.`` + ``Action: TYPE`` + ``Value: x``;
- final answers: ``Final Answer:``, ``answer(...)``, ``finish[...]``, ToolBench ``Finish`` with
  ``final_answer``, OS ``Act: finish`` (finished without an answer text);
- structured calls already on the turn (glaive, OpenAI ``tool_calls``).

Arguments are always a JSON value; ``name[x]`` and ``name(x)`` keep ``x`` verbatim as
``{"input": x}`` so nothing is lost. A turn without markers is plain prose.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from schemas import ToolCall, Turn

MARKERS = ("Thought:", "THOUGHT:", "Think:", "Action:", "ACTION:", "Act:", "Action Input:", "Final Answer:")
# Markers open a line (optionally in markdown bold); the main ones may also follow a sentence
# end mid-line, as in reflexion traces ("... my strategy. Thought: ...").
MARKER_PATTERN = re.compile(
    r"(?:^[ \t]*(?:\*\*)?(?P<marker>Thought|THOUGHT|Think|Action Input|Action|ACTION|Act|Final Answer|Answer|Value"
    r"|Invalid Action)[ \t]*:(?:\*\*)?"
    r"|(?<=[.!?])[ \t]+(?P<inline>Thought|Action Input|Action|Final Answer)[ \t]*:)",
    re.MULTILINE,
)
CODE_BLOCK = re.compile(r"```(?P<lang>[A-Za-z0-9_+-]*)[ \t]*\n(?P<code>.*?)\n?```", re.DOTALL)
BRACKET_CALL = re.compile(r"^(?P<name>[A-Za-z_][\w .-]*?)\s*\[(?P<arg>.*)\]$", re.DOTALL)
PAREN_CALL = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)\s*\((?P<arg>.*)\)$", re.DOTALL)
TWO_WORD_VERBS = ("go to", "pick up", "go through", "look at", "turn left", "turn right", "move forward")
FINISH_NAMES = {"finish", "answer", "final answer", "final_answer"}
THOUGHT_MARKERS = {"thought", "think"}
ACTION_MARKERS = {"action", "act"}


class StepParseError(ValueError):
    """The turn has markers but no well-formed step; ``text`` is the offending part."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True)
class ParsedStep:
    """One agent step. ``finished`` marks a final step, with or without an ``answer`` text."""

    thought: str | None = None
    call: ToolCall | None = None
    answer: str | None = None
    finished: bool = False
    code_language: str | None = None

    @property
    def is_prose(self) -> bool:
        return self.call is None and not self.finished


def has_markers(text: str) -> bool:
    """Whether ``text`` contains a ReAct marker anywhere (the check aligned output must pass)."""
    return any(marker in text for marker in MARKERS)


def _segments(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first marker, [(marker, content), ...])."""
    matches = list(MARKER_PATTERN.finditer(text))
    preamble = text[: matches[0].start()] if matches else text
    segments = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        marker = match.group("marker") or match.group("inline")
        segments.append((marker.lower(), text[match.end() : end].strip()))
    return preamble.strip(), segments


def _json_arguments(raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith("```"):
        block = CODE_BLOCK.search(raw)
        raw = block.group("code") if block else raw.strip("`")
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise StepParseError(f"Action Input is not valid JSON: {exc}", raw) from None


def _finish_answer(arguments: Any) -> str | None:
    """The answer text of a final call's arguments: the string it gives, or the JSON of a typed
    ``answer`` (DB-Bench's list ``["Paris", 3]``: its ``Final Answer:`` text), else ``None``."""
    if isinstance(arguments, dict):
        for key in ("final_answer", "answer", "input"):
            if isinstance(arguments.get(key), str):
                return arguments[key]
        if arguments.get("answer") is not None:
            return json.dumps(arguments["answer"], ensure_ascii=False)
        if arguments.get("return_type") == "give_up_and_restart":
            return None
    if isinstance(arguments, str):
        return arguments
    return None


MAX_COMMAND_WORDS = 16


def _reads_like_prose(action: str) -> bool:
    """A free-text 'action' that is really the agent talking (giving up, a note), not a command."""
    words = action.split()
    return len(words) > MAX_COMMAND_WORDS or (action.rstrip().endswith((".", "!")) and len(words) > 4)


def _command_step(action: str, thought: str | None) -> ParsedStep:
    """A free-text command as a call, or, if it reads like prose, a prose step."""
    if _reads_like_prose(action):
        return ParsedStep(thought="\n\n".join(t for t in (thought, action) if t))
    return ParsedStep(thought=thought, call=_command_call(action))


def _command_call(action: str) -> ToolCall:
    """A free-text environment command: its verb is the tool, the rest its target."""
    lowered = action.lower()
    for verb in TWO_WORD_VERBS:
        if lowered == verb or lowered.startswith(verb + " "):
            rest = action[len(verb) :].strip()
            return ToolCall(name=action[: len(verb)], arguments={"target": rest} if rest else {})
    verb, _, rest = action.partition(" ")
    return ToolCall(name=verb, arguments={"target": rest.strip()} if rest.strip() else {})


def _interpret_action(
    action: str, action_input: str | None, thought: str | None, value: str | None, choice: str | None
) -> ParsedStep:
    first_line = action.partition("\n")[0]
    name = first_line.strip()
    if choice is not None:  # Mind2Web: "Answer: C." then "Action: TYPE" and "Value: ..."
        arguments: dict[str, Any] = {"element": choice}
        if value is not None:
            arguments["value"] = value
        if not name:
            raise StepParseError("Mind2Web step has an empty Action", action)
        return ParsedStep(thought=thought, call=ToolCall(name=name, arguments=arguments))
    block = CODE_BLOCK.search(action)
    if block and action_input is None:  # OS "Act: bash" / DB "Action: Operation" + fenced code
        language = block.group("lang") or name.lower()
        tool = language or name
        key = "query" if tool == "sql" else "script"
        return ParsedStep(
            thought=thought, call=ToolCall(name=tool, arguments={key: block.group("code")}), code_language=language
        )
    if action_input is not None:
        if not name:
            raise StepParseError("Action Input without an Action name", action)
        arguments = _json_arguments(action_input)
        if name.lower() in FINISH_NAMES:
            return ParsedStep(thought=thought, answer=_finish_answer(arguments), finished=True)
        return ParsedStep(thought=thought, call=ToolCall(name=name, arguments=arguments))
    action = action.strip()
    if not action:
        raise StepParseError("empty Action", action)
    for pattern in (BRACKET_CALL, PAREN_CALL):
        match = pattern.match(action)
        if match:
            tool, arg = match.group("name").strip(), match.group("arg")
            if tool.lower() in FINISH_NAMES:
                return ParsedStep(thought=thought, answer=arg.strip(), finished=True)
            return ParsedStep(thought=thought, call=ToolCall(name=tool, arguments={"input": arg}))
    if action.lower() in FINISH_NAMES:
        return ParsedStep(thought=thought, finished=True)
    if "\n" in action:
        raise StepParseError("multi-line Action that is neither a call nor a code block", action)
    return _command_step(action, thought)


def _group(segments: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Split marker segments into one group per action (a turn may hold several)."""
    groups: list[dict[str, str]] = [{}]
    for marker, content in segments:
        current = groups[-1]
        if marker in ACTION_MARKERS:
            if "action" in current:
                groups.append({})
            groups[-1]["action"] = content
        elif marker == "answer":  # Mind2Web's element choice opens a new step once one is complete
            if "action" in current or "choice" in current:
                groups.append({})
            groups[-1]["choice"] = content
        elif marker == "action input":
            current["action_input"] = content
        elif marker == "final answer":
            current["answer"] = content
        elif marker == "value":
            current["value"] = content
        # "invalid action": the agent says there is no valid action; its thought carries that
    return groups


def _steps_of_group(group: dict[str, str], thought: str | None) -> list[ParsedStep]:
    if "answer" in group:  # "Final Answer:" wins over an "Action: Answer" line before it
        return [ParsedStep(thought=thought, answer=group["answer"], finished=True)]
    action, choice = group.get("action"), group.get("choice")
    if action is None:
        if "action_input" in group:
            raise StepParseError("Action Input without an Action", group["action_input"])
        if choice is not None:  # Mind2Web "Answer: A. None of the above." with no action
            return [ParsedStep(thought=thought, answer=choice, finished=True)]
        return [ParsedStep(thought=thought)]
    if action.strip().lower() == "answer" and choice is None:
        raise StepParseError("Action: Answer without a Final Answer", action)
    lines = [line.strip() for line in action.strip().splitlines() if line.strip()]
    plain = "action_input" not in group and choice is None and not CODE_BLOCK.search(action)
    if plain and len(lines) > 1 and not any(BRACKET_CALL.match(x) or PAREN_CALL.match(x) for x in [action.strip()]):
        # several free-text commands in one Action (BabyAI "move forward\nmove forward")
        return [_command_step(line, thought if i == 0 else None) for i, line in enumerate(lines)]
    step = _interpret_action(
        action, group.get("action_input"), thought, group.get("value"), choice.rstrip(".").strip() if choice else None
    )
    return [step]


def _thought_text(text: str) -> str | None:
    """Prose of a turn whose call is structured: its ``Thought:`` markers dropped."""
    preamble, segments = _segments(text)
    parts = [preamble] if preamble else []
    parts += [content for marker, content in segments if marker in THOUGHT_MARKERS]
    return "\n\n".join(p for p in parts if p) or None


def parse_turn(turn: Turn) -> list[ParsedStep]:
    """Parse one assistant turn into its steps (usually one; some turns hold several actions).

    The thought belongs to the first step. Raises :class:`StepParseError` for a malformed step.
    """
    text = turn.text
    if turn.tool_calls:  # one step per call (parallel calls in order); the thought goes first
        stripped = text.strip()
        is_call_text = stripped.startswith(("{", "[")) and stripped.endswith(("}", "]"))
        thought = turn.thought or (None if is_call_text or not stripped else _thought_text(stripped))
        steps = []
        for call in turn.tool_calls:
            first = thought if not steps else None
            if call.name.lower() in FINISH_NAMES:  # ToolBench's structured Finish call
                steps.append(ParsedStep(thought=first, answer=_finish_answer(call.arguments), finished=True))
                continue
            steps.append(ParsedStep(thought=first, call=call))
        return steps
    segments = _segments(text)[1]
    if not segments:
        return [ParsedStep(thought=text.strip() or turn.thought or None)]
    thought = _thought_text(text) or turn.thought
    steps: list[ParsedStep] = []
    for group in _group([(m, c) for m, c in segments if m not in THOUGHT_MARKERS]):
        steps += _steps_of_group(group, thought if not steps else None)
    return steps


def render_react(step: ParsedStep) -> str:
    """The canonical ReAct text of a step (used for format-following samples)."""
    lines = []
    if step.thought:
        lines.append(f"Thought: {step.thought}")
    if step.call is not None:
        lines.append(f"Action: {step.call.name}")
        lines.append(f"Action Input: {json.dumps(step.call.arguments, ensure_ascii=False)}")
    elif step.finished:
        lines.append(f"Final Answer: {step.answer or ''}".rstrip())
    return "\n".join(lines)
