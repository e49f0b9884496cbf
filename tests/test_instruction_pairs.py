"""instruction_pairs: exact formats, checked, drawn deterministically."""

from __future__ import annotations

import json

import pytest

from schemas import Role, ToolCall, Trajectory, Turn, trajectory_id
from transforms.base import RecordError, Stat, StepContext
from transforms.instruction_pairs import InstructionPairs, PairMaker, candidate_steps, check_format, format_answer
from transforms.react import ParsedStep, parse_turn


def traj() -> Trajectory:
    turns = [
        Turn(role=Role.USER, text="weather?"),
        Turn(
            role=Role.ASSISTANT,
            text='Thought: need data.\nAction: get_weather\nAction Input: {"city": "Oslo"}',
            loss=True,
        ),
        Turn(role=Role.TOOL, text="3 C"),
        Turn(role=Role.ASSISTANT, text="ACTION: look", loss=True),  # no thought: not a candidate
        Turn(role=Role.ASSISTANT, text="Thought: example.\nAction: search[x]", loss=False),  # example: not a candidate
    ]
    return Trajectory(id=trajectory_id("s", "1", turns), source="s", source_id="1", turns=turns)


STEP = ParsedStep(thought="need data.", call=ToolCall(name="get_weather", arguments={"city": "Oslo"}))


def test_candidates_are_supervised_steps_with_thought_and_call():
    assert [step for _, step in candidate_steps(traj())] == [STEP]


@pytest.mark.parametrize("fmt", ["react", "json"])
def test_answers_are_exactly_in_format(fmt):
    answer = format_answer(STEP, fmt)
    check_format(STEP, fmt, answer)
    if fmt == "json":
        assert json.loads(answer) == {"thought": "need data.", "tool": "get_weather", "arguments": {"city": "Oslo"}}
    else:
        assert parse_turn(Turn(role=Role.ASSISTANT, text=answer)) == [STEP]
    with pytest.raises(RecordError, match="format_check_failed"):
        check_format(STEP, fmt, answer.replace("Oslo", "Bergen"))


def test_pair_samples():
    step = InstructionPairs({"count": 5}, StepContext(step_id="pairs"))
    maker = PairMaker(step.config, step.context, step.book())
    key = next(k for k, _ in candidate_steps(traj()))
    outs = [o for o in maker(traj(), selected=[key]) if not isinstance(o, Stat)]
    (pair,) = outs
    assert pair.kind == "instruction" and pair.messages[1].part == "react" and pair.messages[1].loss
    assert not pair.messages[0].loss and "get_weather" in pair.messages[0].content
    (filtered,) = list(maker(traj(), selected=[]))
    assert filtered.reason == "not_selected"
