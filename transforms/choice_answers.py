"""Multiple-choice web actions (Mind2Web): does an agent's answer pick an action the page allows?

A Mind2Web step shows a page, the task, the previous actions and lettered choices
(``A. None of the above``, ``B. <a id=0> Deals </a>``, ...); the agent answers
``Answer: B.`` and, for an element, ``Action: CLICK`` / ``TYPE`` / ``SELECT`` with a ``Value:``
for TYPE and SELECT. :func:`choice_problem` reads each agent output against the choices of the
user turn before it and names the first way the answer contradicts them:

* no ``Answer:`` letter, several different letters, or a letter the turn does not offer;
* ``A`` (None of the above) with an action, or an element without one;
* an operation that is not one of ``operations`` (default CLICK, TYPE, SELECT), or one the element
  cannot take (TYPE only into ``<input>`` / ``<textarea>``, SELECT only on ``<select>``);
* TYPE or SELECT without a value, or with a value that no earlier turn contains (the value a
  task asks for is in its task, its previous actions or its page; "Value: Smith" under a task
  about Oscar videos was written for another episode).

Pure functions of the trajectory's text: outputs without lettered choices before them are not
read. Guarantee: the same trajectory gives the same answer on every worker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from schemas import Role, Trajectory

#: Operation -> the element tags it can act on (an empty list: any element).
DEFAULT_OPERATIONS: dict[str, list[str]] = {"CLICK": [], "TYPE": ["input", "textarea"], "SELECT": ["select"]}

#: The letter that means "the action is not on this page".
NONE_LETTER = "A"

_CHOICE = re.compile(r"^([A-Z])\.[ \t]+(.+?)[ \t]*$", re.M)
_ANSWER = re.compile(r"^[ \t]*Answer[ \t]*:[ \t]*([A-Z])\b", re.M)
_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*([A-Za-z]+)", re.M)
_VALUE = re.compile(r"^[ \t]*Value[ \t]*:[ \t]*(.*?)[ \t]*$", re.M)
_TAG = re.compile(r"<\s*([A-Za-z][\w-]*)")


def choices_of(text: str) -> dict[str, str]:
    """The lettered choices of a user turn (``{"A": "None of the above", "B": "<a id=0> ..."}``);
    a letter listed twice keeps its last text (the choices close the prompt)."""
    return {letter: body for letter, body in _CHOICE.findall(text)}


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _clean_value(value: str) -> str:
    return value.strip().strip("\"'“”").rstrip(".").strip()


def answer_problem(
    output: str, choices: Mapping[str, str], before: str, operations: Mapping[str, Sequence[str]]
) -> str | None:
    """Why ``output`` contradicts ``choices`` (``before``: the earlier turns, normalised), or ``None``."""
    letters = list(dict.fromkeys(_ANSWER.findall(output)))
    if not letters:
        return "no 'Answer:' letter"
    if len(letters) > 1:
        return f"several answers ({', '.join(letters)})"
    letter = letters[0]
    if letter not in choices:
        return f"answer {letter} is not among the choices {', '.join(sorted(choices))}"
    actions = [a.upper() for a in _ACTION.findall(output)]
    element = choices[letter]
    if letter == NONE_LETTER:
        return f"answer {letter} ({element[:40]}) comes with an action ({actions[0]})" if actions else None
    if not actions:
        return f"answer {letter} ({element[:60]}) has no action"
    operation = actions[0]
    if operation not in operations:
        return f"action {operation} is none of {', '.join(operations)}"
    tags = operations[operation]
    tag = _TAG.match(element)
    if tags and (tag is None or tag.group(1).lower() not in tags):
        return f"{operation} on {element[:60]!r}: {operation} takes {', '.join(tags)}"
    if operation in ("TYPE", "SELECT"):
        values = _VALUE.findall(output)
        value = _clean_value(values[0]) if values else ""
        if not value:
            return f"{operation} without a value"
        if _norm(value) not in before:
            return f"value {value[:60]!r} appears in no earlier turn"
    return None


def choice_problem(
    trajectory: Trajectory, operations: Mapping[str, Sequence[str]] | None = None
) -> tuple[int, str] | None:
    """``(turn index, why)`` of the first agent output (a supervised assistant turn) whose answer
    contradicts the lettered choices of the user turn before it, else ``None``."""
    operations = DEFAULT_OPERATIONS if operations is None else operations
    seen: list[str] = []
    choices: dict[str, str] = {}
    for index, turn in enumerate(trajectory.turns):
        if turn.role is Role.USER:
            choices = choices_of(turn.text)
        elif turn.role is Role.ASSISTANT and turn.loss and choices:
            problem = answer_problem(turn.text, choices, _norm("\n".join(seen)), operations)
            if problem is not None:
                return index, problem
        seen.append(turn.text)
    return None


__all__ = ["DEFAULT_OPERATIONS", "answer_problem", "choice_problem", "choices_of"]
