"""The step parser on every dialect of METHOD.md (hand-written turns, exact expectations)."""

from __future__ import annotations

import pytest

from schemas import Role, ToolCall, Turn
from transforms.react import ParsedStep, StepParseError, has_markers, parse_turn, render_react


def steps(text: str, **turn) -> list[ParsedStep]:
    return parse_turn(Turn(role=Role.ASSISTANT, text=text, loss=True, **turn))


def one(text: str, **turn) -> ParsedStep:
    (step,) = steps(text, **turn)
    return step


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # OS: Think/Act with a bash block, answer(...), finish
        (
            "Think: list files.\n\nAct: bash\n\n```bash\nls -1 /etc | wc -l\n```",
            ParsedStep(
                thought="list files.",
                call=ToolCall(name="bash", arguments={"script": "ls -1 /etc | wc -l"}),
                code_language="bash",
            ),
        ),
        ("Think: It is 220.\n\nAct: answer(220)", ParsedStep(thought="It is 220.", answer="220", finished=True)),
        ("Think: Done.\n\nAct: finish", ParsedStep(thought="Done.", finished=True)),
        # DB: prose thought, Operation + sql block; Answer + Final Answer
        (
            "Count rows.\nAction: Operation\n```sql\nSELECT COUNT(*) FROM t;\n```",
            ParsedStep(
                thought="Count rows.",
                call=ToolCall(name="sql", arguments={"query": "SELECT COUNT(*) FROM t;"}),
                code_language="sql",
            ),
        ),
        ("It is 3.\nAction: Answer\nFinal Answer: [3]", ParsedStep(thought="It is 3.", answer="[3]", finished=True)),
        # ALFWorld: THOUGHT/ACTION (indented), bare ACTION; verb is the tool
        (
            "THOUGHT: find the pen. \n ACTION: go to desk 1",
            ParsedStep(thought="find the pen.", call=ToolCall(name="go to", arguments={"target": "desk 1"})),
        ),
        (
            "ACTION: take pen 1 from desk 1",
            ParsedStep(call=ToolCall(name="take", arguments={"target": "pen 1 from desk 1"})),
        ),
        ("ACTION: inventory", ParsedStep(call=ToolCall(name="inventory", arguments={}))),
        # WebShop: Thought/Action on their own lines, name[arg]
        (
            "Thought:\nI think I should search.\n\nAction:\nsearch[blue shirt < 20]",
            ParsedStep(
                thought="I think I should search.", call=ToolCall(name="search", arguments={"input": "blue shirt < 20"})
            ),
        ),
        (
            "Thought:\nBuy it.\n\nAction:\nclick[Buy Now]",
            ParsedStep(thought="Buy it.", call=ToolCall(name="click", arguments={"input": "Buy Now"})),
        ),
        # KG: name(args) kept verbatim; Final Answer
        (
            "Thought: relations first.\nAction: get_neighbors(Lyon, geography.city.rivers)",
            ParsedStep(
                thought="relations first.",
                call=ToolCall(name="get_neighbors", arguments={"input": "Lyon, geography.city.rivers"}),
            ),
        ),
        ("Thought: #3 is it.\nFinal Answer: #3", ParsedStep(thought="#3 is it.", answer="#3", finished=True)),
        ("Thought: no way forward.\nInvalid Action: None.", ParsedStep(thought="no way forward.")),
        # Mind2Web: element choice + operation + value; a choice without action is the answer
        (
            "Thought: type the city.\nAnswer: C.\nAction: TYPE\nValue: New York",
            ParsedStep(
                thought="type the city.", call=ToolCall(name="TYPE", arguments={"element": "C", "value": "New York"})
            ),
        ),
        (
            "Thought: nothing fits.\nAnswer: A. None of the above.",
            ParsedStep(thought="nothing fits.", answer="A. None of the above.", finished=True),
        ),
        # ToolBench / generic ReAct: Action + Action Input JSON; Finish with final_answer
        (
            'Thought: get a fact.\nAction: get_fact\nAction Input: {"animal": "cat", "n": 2}',
            ParsedStep(thought="get a fact.", call=ToolCall(name="get_fact", arguments={"animal": "cat", "n": 2})),
        ),
        (
            'Thought: done.\nAction: Finish\nAction Input: {"return_type": "give_answer", '
            '"final_answer": "Cats sleep a lot."}',
            ParsedStep(thought="done.", answer="Cats sleep a lot.", finished=True),
        ),
        # FireAct: finish[answer]; markdown-bold and mid-line (reflexion) markers
        (
            "Thought: found it.\nAction: finish[Badr Hari]",
            ParsedStep(thought="found it.", answer="Badr Hari", finished=True),
        ),
        (
            "**Thought:** look around.\n**Action:** turn left",
            ParsedStep(thought="look around.", call=ToolCall(name="turn left", arguments={})),
        ),
        (
            "Let me reflect. Thought: try again.\nAction: search[x]",
            ParsedStep(thought="Let me reflect.\n\ntry again.", call=ToolCall(name="search", arguments={"input": "x"})),
        ),
        # plain prose, and an 'action' that is really the agent talking
        (
            "I've understood your instruction, start please.",
            ParsedStep(thought="I've understood your instruction, start please."),
        ),
        (
            "ACTION: unable to perform the task as the required items are not available in the environment.",
            ParsedStep(
                thought="unable to perform the task as the required items are not available in the environment."
            ),
        ),
    ],
)
def test_dialects(text, expected):
    assert one(text) == expected


def test_several_actions_in_one_turn_become_several_steps():
    two = steps("Thought: fill both.\nAnswer: B.\nAction: TYPE\nValue: Columbus\nAnswer: C.\nAction: TYPE\nValue: 1234")
    assert [s.call for s in two] == [
        ToolCall(name="TYPE", arguments={"element": "B", "value": "Columbus"}),
        ToolCall(name="TYPE", arguments={"element": "C", "value": "1234"}),
    ]
    assert [s.thought for s in two] == ["fill both.", None]
    moves = steps("Thought:\nget the key.\n\nAction:\nmove forward\nmove forward\npick up red key 1")
    assert [s.call.name for s in moves] == ["move forward", "move forward", "pick up"]
    assert moves[2].call.arguments == {"target": "red key 1"}


def test_structured_calls_glaive_and_toolbench_finish():
    call = ToolCall(name="get_weather", arguments={"city": "Oslo"})
    assert one('{"name": "get_weather", "arguments": {"city": "Oslo"}}', tool_calls=[call]) == ParsedStep(call=call)
    assert one("Thought: I need the weather.", tool_calls=[call]) == ParsedStep(
        thought="I need the weather.", call=call
    )
    finish = ToolCall(name="Finish", arguments={"return_type": "give_answer", "final_answer": "3 degrees"})
    assert one("", tool_calls=[finish]) == ParsedStep(answer="3 degrees", finished=True)


@pytest.mark.parametrize(
    "text",
    [
        'Thought: x\nAction: f\nAction Input: {"a": ',
        "Thought: x\nAction Input: {}",
        "Thought: x\nAction: Answer",
        "Thought: x\nAction:",
    ],
)
def test_malformed_steps_raise_with_the_offending_text(text):
    with pytest.raises(StepParseError) as info:
        steps(text)
    assert info.value.text is not None


def test_render_react_round_trips():
    step = ParsedStep(thought="get a fact.", call=ToolCall(name="get_fact", arguments={"animal": "cat"}))
    text = render_react(step)
    assert text == 'Thought: get a fact.\nAction: get_fact\nAction Input: {"animal": "cat"}'
    assert one(text) == step and has_markers(text)


def test_parallel_calls_are_one_step_each_with_the_thought_first():
    calls = [ToolCall(name="w", arguments={"city": c}, id=f"call_{i}") for i, c in enumerate(("Oslo", "Rome"))]
    parsed = steps("Both cities.", tool_calls=calls)
    assert parsed == [ParsedStep(thought="Both cities.", call=calls[0]), ParsedStep(call=calls[1])]


def test_a_final_call_with_a_typed_answer_gives_its_json_as_the_answer_text():
    # DB's answer tool takes a list; as text its answer is the list's JSON, as DB-Bench writes it
    native = Turn(
        role=Role.ASSISTANT, text="", tool_calls=[ToolCall(name="answer", arguments={"answer": ["Paris", 3]})]
    )
    assert parse_turn(native) == [ParsedStep(answer='["Paris", 3]', finished=True)]
    finish = Turn(role=Role.ASSISTANT, text='Action: finish\nAction Input: {"answer": ["Paris", 3]}')
    assert parse_turn(finish)[0].answer == '["Paris", 3]'
    plain = Turn(role=Role.ASSISTANT, text="", tool_calls=[ToolCall(name="answer", arguments={"answer": "Paris"})])
    assert parse_turn(plain)[0].answer == "Paris"
