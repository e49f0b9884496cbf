"""check_calls: declared tools, schema-valid arguments, linked tool results; Python type names."""

from __future__ import annotations

from schemas import Lineage, Message, Role, Sample, ToolCall, ToolSpec
from transforms.base import Filtered, Stat, StepContext
from transforms.check_calls import CallChecker, CheckCallsConfig, json_schema_types

WEATHER = ToolSpec(
    name="w",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def sample(*calls: ToolCall, tools=(WEATHER,), result_id: str | None = "call_0") -> Sample:
    return Sample(
        id="s",
        kind="agent",
        messages=[
            Message(role=Role.USER, content="weather?"),
            Message(role=Role.ASSISTANT, content="", loss=True, tool_calls=list(calls)),
            Message(role=Role.TOOL, content="3", tool_call_id=result_id),
            Message(role=Role.ASSISTANT, content="3 degrees.", loss=True),
        ],
        tools=list(tools),
        lineage=Lineage(source="src", source_id="a"),
    )


def run(s: Sample, **config) -> list:
    return list(CallChecker(CheckCallsConfig(**config), StepContext(step_id="check"))(s))


def reasons(out: list) -> list[str]:
    return [o.reason for o in out if isinstance(o, Filtered)]


def test_valid_calls_pass_unchanged_and_are_counted():
    call = ToolCall(name="w", arguments={"city": "Oslo"}, id="call_0")
    out = run(sample(call, ToolCall(name="w", arguments={"city": "Rome"}, id="call_1")))
    (kept,) = [o for o in out if isinstance(o, Sample)]
    assert kept.messages == sample(call, ToolCall(name="w", arguments={"city": "Rome"}, id="call_1")).messages
    assert Stat("calls", 2) in out and kept.lineage.steps == ["check"]


def test_undeclared_invalid_extra_keys_and_unlinked_results_are_filtered_with_the_call():
    assert reasons(run(sample(ToolCall(name="time", id="call_0")))) == ["undeclared_tool"]
    bad = run(sample(ToolCall(name="w", arguments={"city": 3}, id="call_0")))
    assert reasons(bad) == ["invalid_arguments"] and 'w({"city":3})' in bad[0].detail
    extra = ToolCall(name="w", arguments={"city": "Oslo", "year": 2019}, id="call_0")
    assert reasons(run(sample(extra))) == ["invalid_arguments"]
    assert not reasons(run(sample(extra), forbid_extra=False))
    ok = ToolCall(name="w", arguments={"city": "Oslo"}, id="call_0")
    assert reasons(run(sample(ok, result_id=None))) == ["unlinked_tool_result"]
    assert reasons(run(sample(ok, result_id="call_9"))) == ["unlinked_tool_result"]
    assert not reasons(run(sample(ok, result_id=None), require_linked_results=False))


def test_python_type_names_are_mapped_before_checking():
    items = {"type": "list", "items": {"type": "str"}}
    schema = {"type": "dict", "properties": {"n": {"type": "float"}, "tags": items}}
    assert json_schema_types(schema) == {
        "type": "object",
        "properties": {"n": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}},
    }
    tool = ToolSpec(name="f", parameters=schema)
    out = run(sample(ToolCall(name="f", arguments={"n": 1.5, "tags": ["a"]}, id="call_0"), tools=[tool]))
    (kept,) = [o for o in out if isinstance(o, Sample)]
    assert kept.tools[0].parameters["type"] == "object" and Stat("schemas_mapped", 1) in out
    unmapped = run(sample(ToolCall(name="f", arguments={"n": 1}, id="call_0"), tools=[tool]), python_types=False)
    assert reasons(unmapped) == ["invalid_schema"]


def test_a_bare_property_map_is_wrapped_as_an_object_schema_and_checked():
    from transforms.check_calls import is_bare_property_map, json_schema_parameters

    # reason_tool_use's `search`: property name -> property schema, no object schema around it
    bare = {
        "q": {"description": "The search query string.", "type": "string", "default": "pizza"},
        "number": {"description": "Results to return. Defaults to 10.", "type": "int, optional", "default": "10"},
    }
    assert is_bare_property_map(bare)
    assert json_schema_parameters(bare) == {
        "type": "object",
        "properties": {
            "q": {"description": "The search query string.", "type": "string", "default": "pizza"},
            "number": {"description": "Results to return. Defaults to 10.", "type": "integer", "default": "10"},
        },
    }
    assert not is_bare_property_map(WEATHER.parameters)
    assert not is_bare_property_map({"city": "Oslo"})  # values must be property schemas
    tool = ToolSpec(name="search", parameters=bare)
    out = run(sample(ToolCall(name="search", arguments={"q": "tacos", "number": 5}, id="call_0"), tools=[tool]))
    (kept,) = [o for o in out if isinstance(o, Sample)]
    assert kept.tools[0].parameters["type"] == "object" and Stat("schemas_mapped", 1) in out
    # checked at all now: an undeclared key and a wrong type fail
    assert reasons(run(sample(ToolCall(name="search", arguments={"query": "tacos"}, id="call_0"), tools=[tool]))) == [
        "invalid_arguments"
    ]
    assert reasons(run(sample(ToolCall(name="search", arguments={"number": "ten"}, id="call_0"), tools=[tool]))) == [
        "invalid_arguments"
    ]
