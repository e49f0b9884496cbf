"""align with ``style: native``: ReAct text becomes native tool calling (one assistant message per
step with structured ``tool_calls``, the environment's answer a linked ``tool`` message)."""

from __future__ import annotations

import pytest

from schemas import Role, ToolCall, ToolSpec
from tests.test_align import aligner, outputs, trajectory
from transforms.base import Filtered

FACT = ToolSpec(
    name="get_fact",
    description="A fact",
    parameters={"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"]},
)


def test_react_steps_become_native_calls_with_linked_results():
    traj = trajectory(
        ("user", "Find a cat fact.", False),
        ("assistant", 'Thought: call the API.\nAction: get_fact\nAction Input: {"animal": "cat"}', True),
        ("user", '{"fact": "cats nap"}', False),
        ("assistant", "Thought: done.\nFinal Answer: Cats nap most of the day, up to sixteen hours.", True),
        tools=[FACT],
    )
    (sample,) = outputs(aligner(style="native", finals="prose"), traj)
    roles = [m.role for m in sample.messages]
    assert roles == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]  # no system: no card, no instruction
    call = sample.messages[1]
    assert call.content == "call the API." and call.loss
    assert call.tool_calls == [ToolCall(name="get_fact", arguments={"animal": "cat"}, id="call_0")]
    result = sample.messages[2]
    assert (result.tool_call_id, result.name, result.content) == ("call_0", "get_fact", '{"fact": "cats nap"}')
    assert sample.messages[3].content.startswith("done.\n\nCats nap") and not sample.messages[3].tool_calls
    assert not any(m.part == "elicit" for m in sample.messages) and sample.tools == [FACT]


def test_card_tools_are_declared_not_described_and_the_card_final_is_prose():
    traj = trajectory(
        ("user", "How many files are in /etc?", False),
        ("assistant", "Think: count them.\n\nAct: bash\n\n```bash\nls /etc | wc -l\n```", True),
        ("user", "The output of the OS:\n220", False),
        ("assistant", "Think: done.\n\nAct: answer(220)", True),
        task="os",
    )
    (sample,) = outputs(aligner(style="native", finals="prose"), traj)
    assert sample.messages[0].role is Role.SYSTEM and "bash (" not in sample.messages[0].content
    assert [t.name for t in sample.tools] == ["bash"]
    assert sample.messages[2].tool_calls[0].name == "bash" and sample.messages[2].tool_calls[0].id == "call_0"
    assert sample.messages[3].role is Role.TOOL and sample.messages[3].tool_call_id == "call_0"
    assert "220" in sample.messages[4].content and not sample.messages[4].tool_calls


def test_several_text_actions_in_one_turn_are_filtered():
    traj = trajectory(
        ("user", "go", False),
        ("assistant", "Thought:\nget the key.\n\nAction:\nmove forward\nmove forward", True),
        ("user", "You moved.", False),
        task="babyai",
    )
    out = list(aligner(style="native")(traj))
    reasons = [o.reason for o in out if isinstance(o, Filtered)]
    assert reasons == ["several_actions_in_a_turn"] or pytest.fail(f"{out}")
