"""``format_contradiction``: instructions that demand a format the supervised targets do not
follow, and targets in a format nobody asked for."""

from __future__ import annotations

import json
import re

from schemas import Role, Sample
from transforms.quality.check import SampleCheck, Verdict, first_supervised

#: A ReAct format word and its colon.
_MARKER = r"(?:Thought|THOUGHT|Think|Action|ACTION|Act|Action Input|Final Answer)[ \t]*:"
#: What may stand between a line's start and a marker that opens it.
_LEAD = " \t>*-\"'`"
#: ReAct format words that, opening lines of an instruction, demand ReAct output.
_REACT_LINE = re.compile(f"^[{re.escape(_LEAD)}]*{_MARKER}", re.MULTILINE)
_JSON_DEMAND = re.compile(
    r"\b(?:respond|reply|answer|output|format)\w*\s+(?:\w+\s+){0,4}?(?:only\s+)?(?:in|with|as)\s+"
    r"(?:a\s+|valid\s+|the\s+following\s+)*JSON\b|\b(?:your|the)\s+(?:response|reply|answer|output)\s+"
    r"(?:must|should)\s+be\s+(?:a\s+|valid\s+)*JSON\b|\bJSON\s+only\b|\bonly\s+(?:output|return)\s+JSON\b",
    re.IGNORECASE,
)


_REACT_NAMED = re.compile(r"\bReAct\b")
#: A ReAct marker anywhere (the regex engine skips to a marker's first letter at C speed);
#: :func:`demands_react` then looks at what precedes it.
_REACT_MARKER = re.compile(_MARKER)
_REACT_LEAD = frozenset(_LEAD)
#: In instructions, a marker may also follow a quote mid-line (format:"THOUGHT: your thoughts.).
_QUOTES = frozenset("\"'`")


def demands_react(text: str) -> bool:
    """``text`` names the ReAct format, or ReAct markers open at least two of its lines (after
    spaces, quotes, ``>``, ``*`` or ``-``) or follow a quote mid-line (a format demand or an
    example)."""
    if "ReAct" in text and _REACT_NAMED.search(text):
        return True
    shown = 0
    for match in _REACT_MARKER.finditer(text):
        i = match.start() - 1
        if i >= 0 and text[i] not in _QUOTES:
            while i >= 0 and text[i] in _REACT_LEAD:
                i -= 1
            if i >= 0 and text[i] != "\n":
                continue  # mid-line, not after a quote
        shown += 1
        if shown == 2:
            return True
    return False


#: A line that opens with a thought marker (``word``); ``rest`` is the rest of that line.
_THOUGHT_LINE = re.compile(
    f"^[{re.escape(_LEAD)}]*(?P<word>Thought|THOUGHT|Think)[ \t]*:(?P<rest>[^\n]*)", re.MULTILINE
)
#: A line that opens with an action marker (``Action Input:`` is not one).
_ACTION_LINE = re.compile(f"^[{re.escape(_LEAD)}]*(?:Action|ACTION|Act)[ \t]*:", re.MULTILINE)


def demanded_thoughts(text: str) -> frozenset[str]:
    """The thought markers (``Thought``, ``THOUGHT``, ``Think``) that open a line of ``text``
    which does not call the thought optional: the format shown asks for that thought before each
    action. Empty when none is demanded."""
    if "T" not in text:
        return frozenset()
    return frozenset(m.group("word") for m in _THOUGHT_LINE.finditer(text) if "optional" not in m.group("rest").lower())


def skips_thought(text: str, demanded: frozenset[str]) -> bool:
    """``text`` has an action line but no line that opens with one of the ``demanded`` thought
    markers (the action comes without its thought, or under another marker)."""
    if not demanded or not _ACTION_LINE.search(text):
        return False
    return not any(m.group("word") in demanded for m in _THOUGHT_LINE.finditer(text))


def instructions_of(sample: Sample, start: int) -> str:
    """What instructs the targets of ``sample`` whose first target is message ``start``: system,
    user and (unsupervised) assistant text before it, and later system and user text except
    elicit turns."""
    before = "\n".join(m.content for m in sample.messages[:start] if m.role in (Role.SYSTEM, Role.USER, Role.ASSISTANT))
    later = "\n".join(
        m.content for m in sample.messages[start:] if m.role in (Role.SYSTEM, Role.USER) and m.part != "elicit"
    )
    return before + "\n" + later


def demands_json(text: str) -> bool:
    return "json" in text.lower() and bool(_JSON_DEMAND.search(text))


def is_react(text: str) -> bool:
    """A ReAct marker (Thought:, Action:, Final Answer:, ...) opens a line of ``text``."""
    return bool(_REACT_LINE.search(text))


def is_json(text: str) -> bool:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`").removeprefix("json").strip()
    if stripped[:1] not in ("{", "["):
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True


class FormatContradiction(SampleCheck):
    name = "format_contradiction"
    definition = (
        "Share of samples whose instructions (system and user text, and unsupervised assistant "
        "examples, before the first supervised turn) demand ReAct lines (Thought:/Action:/... "
        "markers opening two or more lines) or JSON-only output while no supervised "
        "assistant turn follows that format; or whose supervised turns are in ReAct form while no "
        "instruction shows that format; or whose instructions show a thought line (Thought:/"
        "Think:, not called optional) while a supervised turn has an action line without a line "
        "opening with that thought marker."
    )
    threshold = 0.01
    severity = "warn"

    def inspect(self, sample: Sample) -> Verdict | None:
        start = first_supervised(sample)
        if start is None:
            return None
        instructions = instructions_of(sample, start)
        targets = [m.content for m in sample.messages[start:] if m.role is Role.ASSISTANT and m.loss]
        wants_react, wants_json = demands_react(instructions), demands_json(instructions)
        has_react = any(is_react(t) for t in targets)
        has_json = any(is_json(t) for t in targets) or any(
            bool(m.tool_calls) for m in sample.messages[start:] if m.loss
        )
        if wants_react and not has_react and not (wants_json and has_json):
            return Verdict(True, _demand_excerpt(instructions), "react_demanded")
        if wants_json and not has_json and not (wants_react and has_react):
            return Verdict(True, _JSON_DEMAND.search(instructions).group(0), "json_demanded")  # type: ignore[union-attr]
        if has_react and not wants_react:
            return Verdict(True, next(t for t in targets if is_react(t)), "react_unrequested")
        demanded = demanded_thoughts(instructions) if has_react else frozenset()
        skipped = next((t for t in targets if skips_thought(t, demanded)), None) if demanded else None
        if skipped is not None:
            return Verdict(True, skipped, "thought_demanded")
        return Verdict(False)


def _demand_excerpt(text: str) -> str:
    match = _REACT_LINE.search(text)
    start = max(0, match.start() - 120) if match else 0
    return text[start : start + 240]
