from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from schemas import (
    ArrowCodec,
    Lineage,
    Message,
    Role,
    Sample,
    ToolCall,
    ToolSpec,
    Trajectory,
    Turn,
    arrow_schema,
    count_tokens,
    parse_tool_list,
    stable_id,
    trajectory_id,
)


def make_sample(**overrides) -> Sample:
    values = dict(
        id="s1",
        kind="agent",
        messages=[
            Message(role=Role.USER, content="what is the weather", loss=False),
            Message(
                role=Role.ASSISTANT,
                content="",
                loss=True,
                tool_calls=[
                    ToolCall(name="w", arguments={"city": "Oslo", "n": [1, 2]}, id="call_0"),
                    ToolCall(name="w", arguments={"city": "Rome"}, id="call_1"),
                ],
            ),
        ],
        tools=[ToolSpec(name="w", description="weather", parameters={"type": "object"})],
        lineage=Lineage(source="src", source_id="a", steps=["chat"]),
        metadata={"reward": 0.5, "nested": {"a": [1, None]}},
    )
    values.update(overrides)
    return Sample(**values)


def test_arrow_schema_is_derived_from_the_model_fields():
    schema = arrow_schema(Sample)
    assert schema.names == list(Sample.model_fields)
    message = schema.field("messages").type.value_type
    assert [message.field(i).name for i in range(message.num_fields)] == list(Message.model_fields)
    assert schema.field("metadata").type == pa.string()  # free JSON stored as text
    assert arrow_schema(Trajectory).names == list(Trajectory.model_fields)


def test_arrow_codec_round_trips_a_sample_exactly():
    codec = ArrowCodec(Sample)
    sample = make_sample()
    batch = codec.to_batch([codec.to_row(sample)])
    (row,) = batch.to_pylist()
    assert codec.from_row(row) == sample
    assert row["messages"][1]["tool_calls"][0]["arguments"] == '{"city":"Oslo","n":[1,2]}'
    assert [c["id"] for c in row["messages"][1]["tool_calls"]] == ["call_0", "call_1"]


def test_stable_ids_depend_on_every_part():
    base = stable_id("src", "1", "to_chat")
    assert base == stable_id("src", "1", "to_chat")
    assert (
        len({base, stable_id("src2", "1", "to_chat"), stable_id("src", "2", "to_chat"), stable_id("src", "1", "x")})
        == 4
    )


def test_trajectory_id_tells_apart_rollouts_of_one_task_but_not_identical_records():
    a = [Turn(role=Role.USER, text="task"), Turn(role=Role.ASSISTANT, text="act 1", loss=True)]
    b = [Turn(role=Role.USER, text="task"), Turn(role=Role.ASSISTANT, text="act 2", loss=True)]
    assert trajectory_id("s", "item_1", a) != trajectory_id("s", "item_1", b)
    assert trajectory_id("s", "item_1", a) == trajectory_id("s", "item_1", list(a))


def test_count_tokens_counts_supervised_words_only_on_loss_messages():
    counts = count_tokens(
        [Message(role=Role.USER, content="a b c"), Message(role=Role.ASSISTANT, content="d e", loss=True)]
    )
    assert (counts.tokens, counts.supervised_tokens) == (5, 2)


def test_parse_tool_list_accepts_json_text_and_openai_wrappers():
    tools = parse_tool_list(
        '[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"x": 1}}}]'
    )
    assert tools == [ToolSpec(name="f", description="d", parameters={"x": 1})]
    with pytest.raises(ValueError):
        parse_tool_list("[not json")
    with pytest.raises(ValidationError):
        parse_tool_list([{"description": "no name"}])


def test_a_required_list_beside_the_parameters_is_moved_into_the_object_schema():
    # reason_tool_use's `match`: "required" sits next to "parameters", not in it
    props = {"type": "object", "properties": {"id": {"type": "string"}, "is_id": {"type": "boolean"}}}
    entry = {"type": "function", "function": {"name": "match", "parameters": props, "required": ["is_id"]}}
    (tool,) = parse_tool_list([entry])
    assert tool.parameters == {**props, "required": ["is_id"]}
    # a schema that says its own required keeps it; an empty or missing list changes nothing
    own = {**props, "required": ["id"]}
    assert parse_tool_list([{"name": "m", "parameters": own, "required": ["is_id"]}])[0].parameters == own
    assert parse_tool_list([{"name": "m", "parameters": props, "required": None}])[0].parameters == props
    bare = {"q": {"type": "string"}}
    assert parse_tool_list([{"name": "m", "parameters": bare, "required": ["q"]}])[0].parameters == bare


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError):
        Message(role="assistant", content="x", bogus=1)
    with pytest.raises(ValidationError):
        Message(role="wizard", content="x")
