"""Calls that send to an email address the conversation never gave are filtered
``ungrounded_argument`` in align, instruction_pairs and check_calls."""

from __future__ import annotations

import pytest

from schemas import Lineage, Message, Role, Sample, ToolCall, ToolSpec, Trajectory, Turn, count_tokens, trajectory_id
from transforms.align import Align
from transforms.base import Filtered, StepContext
from transforms.check_calls import CallChecker, CheckCallsConfig
from transforms.grounded_arguments import EMAIL, ungrounded_call, ungrounded_emails
from transforms.instruction_pairs import NotEligible, read_conversation

SEND = ToolSpec(
    name="send_email",
    description="Send an email",
    parameters={
        "type": "object",
        "properties": {"recipient": {"type": "string"}, "body": {"type": "string"}},
        "required": ["recipient"],
    },
)
ASKED = "请给我的老板发一封邮件，地址是 boss@company.com，说我明天请假。"


def test_addresses_are_whole_addresses_in_any_script():
    text = "boss@company.com, 约翰·多伊@example.com, LIKE '%@gmail.com', '%hello@gmail.com%', a@b, end@x.org."
    assert EMAIL.findall(text) == ["boss@company.com", "约翰·多伊@example.com", "end@x.org"]
    arguments = {"recipient": "老板@公司.com", "cc": ["boss@company.com", "Boss@Company.com"], "n": 3}
    assert ungrounded_emails(arguments, ASKED) == ["老板@公司.com"]
    assert ungrounded_emails({"query": "SELECT * FROM u WHERE mail LIKE '%@gmail.com'"}, "") == []


def trajectory(recipient: str, loss: bool = True) -> Trajectory:
    turns = [
        Turn(role=Role.USER, text=ASKED),
        Turn(
            role=Role.ASSISTANT,
            text="",
            loss=loss,
            tool_calls=[ToolCall(name="send_email", arguments={"recipient": recipient, "body": "明天请假"})],
        ),
        Turn(role=Role.TOOL, text='{"status": "sent"}'),
        Turn(role=Role.ASSISTANT, text="邮件已发送。", loss=True),
    ]
    return Trajectory(
        id=trajectory_id("glaive", recipient, turns), source="glaive", source_id="1", turns=turns, tools=[SEND]
    )


@pytest.mark.parametrize("style", ["agent_flan", "native"])
def test_align_filters_a_supervised_call_to_an_address_nobody_gave(style):
    step = Align({"keep_format_share": 0.0, "style": style}, StepContext(step_id="align"))
    aligner = step.processor()
    (translated,) = [o for o in aligner(trajectory("老板@公司.com")) if isinstance(o, Filtered)]
    assert translated.reason == "ungrounded_argument"
    assert "老板@公司.com" in translated.detail
    kept = [o for o in aligner(trajectory("boss@company.com")) if isinstance(o, Sample)]
    assert len(kept) == 1
    unsupervised = [o for o in aligner(trajectory("老板@公司.com", loss=False)) if isinstance(o, Sample)]
    assert len(unsupervised) == 1  # an example the model does not learn to write


def test_instruction_pairs_leave_out_such_a_trajectory():
    with pytest.raises(NotEligible) as refused:
        read_conversation(trajectory("老板@公司.com"), None)
    assert refused.value.reason == "ungrounded_argument"
    assert read_conversation(trajectory("boss@company.com"), None).tools == (SEND,)


def test_check_calls_filters_it_in_native_data():
    def sample(recipient: str, **config) -> list:
        messages = [
            Message(role=Role.USER, content=ASKED),
            Message(
                role=Role.ASSISTANT,
                content="",
                loss=True,
                tool_calls=[ToolCall(name="send_email", arguments={"recipient": recipient}, id="call_0")],
            ),
            Message(role=Role.TOOL, content='{"status": "sent"}', tool_call_id="call_0"),
        ]
        one = Sample(id="s", kind="agent", messages=messages, tools=[SEND],
                     lineage=Lineage(source="glaive", source_id="1"), counts=count_tokens(messages))  # fmt: skip
        return list(CallChecker(CheckCallsConfig(**config), StepContext(step_id="check"))(one))

    (filtered,) = [o for o in sample("老板@公司.com") if isinstance(o, Filtered)]
    assert filtered.reason == "ungrounded_argument"
    assert any(isinstance(o, Sample) for o in sample("boss@company.com"))
    assert any(isinstance(o, Sample) for o in sample("老板@公司.com", grounded_contacts=False))


def test_a_date_whose_year_nobody_gave_is_made_up():
    """glaive's conversations carry no current date; its calls invent one for "today" and
    "tomorrow". A date whose year an earlier message writes is given, in any format."""
    asked = "Hi, I was born on 1990-05-15. Can you tell me how old I am today?"
    invented = {"birthdate": "1990-05-15", "current_date": "2022-03-15"}
    detail = ungrounded_call("calculate_age", invented, [asked])
    assert detail == "call to 'calculate_age' uses the date [\"2022-03-15\"], whose year no earlier turn gives"
    assert ungrounded_call("calculate_age", {"birthdate": "1990-05-15"}, ["I was born on May 15th, 1990."]) is None
    # the year in a tool result, or in a timestamp, counts; digits inside a longer number do not
    assert ungrounded_call("create_event", {"start": "2022-04-15T10:00"}, ["today", '{"date": "2022-04-14"}']) is None
    assert ungrounded_call("create_event", {"start": "2022-04-15"}, ["order 120223 tomorrow"]) is not None
    assert ungrounded_call("lookup", {"code": "20221-03-15", "n": 2022}, ["no year"]) is None
    # a year derived from one the conversation gives: "in 2011" -> its bounds, "last year" after
    # a date that printed 2023 (AgentInstruct DB and OS answers)
    assert ungrounded_call("sql", {"q": "BETWEEN '2010-12-31' AND '2012-01-01'"}, ["claims in 2011"]) is None
    assert ungrounded_call("bash", {"c": "date -d '2022-12-21'"}, ["last year?", "Sat Sep  9 2023"]) is None
    assert ungrounded_call("sql", {"q": "WHERE Date = '2022-03-20'"}, ["the date of March 20th"]) is not None


def test_align_filters_a_supervised_call_with_an_invented_date():
    turns = [
        Turn(role=Role.USER, text="I need a calendar event for my meeting tomorrow."),
        Turn(
            role=Role.ASSISTANT,
            text="",
            loss=True,
            tool_calls=[ToolCall(name="create_calendar_event", arguments={"title": "Meeting", "date": "2022-04-15"})],
        ),
        Turn(role=Role.TOOL, text='{"status": "created"}'),
        Turn(role=Role.ASSISTANT, text="Done.", loss=True),
    ]
    event = ToolSpec(
        name="create_calendar_event",
        description="Create an event",
        parameters={"type": "object", "properties": {"title": {"type": "string"}, "date": {"type": "string"}}},
    )
    key = trajectory_id("glaive", "d", turns)
    made_up = Trajectory(id=key, source="glaive", source_id="d", turns=turns, tools=[event])
    aligner = Align({"keep_format_share": 0.0}, StepContext(step_id="align")).processor()
    (filtered,) = [o for o in aligner(made_up) if isinstance(o, Filtered)]
    assert filtered.reason == "ungrounded_argument" and "2022-04-15" in filtered.detail
