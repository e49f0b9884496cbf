"""Native tool calling in training: tools and structured calls reach the chat templates, the labels
of a multi-turn tool sample cover exactly the assistant turns (content, calls, end marker), and the
round-trip gate parses every supervised turn back with the template's response template."""

from __future__ import annotations

import json

import pytest
from train_helpers import tiny_assets

from schemas.chat import conversation, message_dict, template_tools
from schemas.sample import Lineage, Message, Sample
from schemas.tools import ToolCall, ToolSpec
from schemas.trajectory import Role
from train.config import build_parser, validate_args
from train.data import IGNORE_INDEX, Dropped, TokenizedSample, strict_problem, tokenize_all, tokenize_sample
from train.templates import (
    BUILTIN_TEMPLATES,
    TEMPLATE_DIR,
    SpecialTokens,
    TemplateError,
    ensure_special_tokens,
    load_template,
    read_response_template,
    render,
    render_with_spans,
    round_trip,
)

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
OSLO = ToolCall(id="call_0", name="get_weather", arguments={"city": "Oslo", "days": 2})
ROME = ToolCall(id="call_1", name="get_weather", arguments={"city": "Rome", "days": 1})
OBS_OSLO, OBS_ROME = '{"sky": "sunny"}', '{"sky": "rain"}'


def tool_sample(first_content: str = "") -> Sample:
    """A multi-turn native tool sample: parallel calls, two linked results, a call with prose, an answer."""
    messages = [
        Message(role=Role.SYSTEM, content="Be brief."),
        Message(role=Role.USER, content="Weather in Oslo and Rome?"),
        Message(role=Role.ASSISTANT, content=first_content, loss=True, tool_calls=[OSLO, ROME]),
        Message(role=Role.TOOL, content=OBS_OSLO, tool_call_id="call_0", name="get_weather"),
        Message(role=Role.TOOL, content=OBS_ROME, tool_call_id="call_1", name="get_weather"),
        Message(role=Role.ASSISTANT, content="Oslo is sunny; Rome has rain.", loss=True),
        Message(role=Role.USER, content="And Oslo next week?"),
        Message(role=Role.ASSISTANT, content="Let me check.", loss=True, tool_calls=[OSLO]),
        Message(role=Role.TOOL, content=OBS_OSLO, tool_call_id="call_0", name="get_weather"),
        Message(role=Role.ASSISTANT, content="Sunny too.", loss=True),
    ]
    return Sample(
        id="tools1",
        kind="agent",
        messages=messages,
        tools=[WEATHER],
        lineage=Lineage(source="test", source_id="1"),
    )


def hermes(call: ToolCall) -> str:
    return "<tool_call>\n" + json.dumps({"name": call.name, "arguments": call.arguments}) + "\n</tool_call>"


def llama3_call(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "parameters": call.arguments})


#: The exact text each native template makes the model generate for the four assistant turns.
EXPECTED_TURNS = {
    "chatml": [
        hermes(OSLO) + "\n" + hermes(ROME) + "<|im_end|>",
        "Oslo is sunny; Rome has rain.<|im_end|>",
        "Let me check.\n" + hermes(OSLO) + "<|im_end|>",
        "Sunny too.<|im_end|>",
    ],
    "llama3": [
        llama3_call(OSLO) + "; " + llama3_call(ROME) + "<|eot_id|>",
        "Oslo is sunny; Rome has rain.<|eot_id|>",
        "Let me check.\n\n" + llama3_call(OSLO) + "<|eot_id|>",
        "Sunny too.<|eot_id|>",
    ],
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    tok_dir, _ = tiny_assets(tmp_path_factory.getbasetemp())
    return AutoTokenizer.from_pretrained(str(tok_dir))


def supervised_runs(result: TokenizedSample) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = False
    for tid, label in zip(result.input_ids, result.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == tid
            if not previous:
                runs.append([])
            runs[-1].append(tid)
        previous = label != IGNORE_INDEX
    return runs


# ---- rendering ---------------------------------------------------------------------------------


def test_message_dicts_carry_structured_calls_and_tool_links():
    messages, flags, _ = conversation(tool_sample())
    assert messages[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": OSLO.arguments}},
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ROME.arguments}},
        ],
    }
    assert messages[3] == {"role": "tool", "content": OBS_OSLO, "tool_call_id": "call_0", "name": "get_weather"}
    assert flags == [m.loss for m in tool_sample().messages]
    # A template without native calls gets them as JSON lines after the content: nothing is lost.
    flat = message_dict(tool_sample().messages[7], native=False)
    assert flat == {
        "role": "assistant",
        "content": 'Let me check.\n{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}',
    }


def test_calls_spelled_in_text_render_once_and_without_the_template_tool_block():
    # align's arguments part: the content is the call; the structured call is not rendered again.
    spelled = Message(role=Role.ASSISTANT, content='{"city": "Oslo"}', loss=True, part="arguments", tool_calls=[OSLO])
    assert message_dict(spelled) == {"role": "assistant", "content": '{"city": "Oslo"}'}
    sample = tool_sample().model_copy(update={"messages": [Message(role=Role.USER, content="q"), spelled]})
    assert template_tools(sample) is None  # its own prompt describes its tools and format
    assert template_tools(tool_sample()) == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters},
        }
    ]


def test_a_kept_react_turn_renders_its_call_natively_unless_its_text_spells_it():
    # A kept-format ToolBench turn: nothing beside the structured call. Its call must be rendered.
    bare = Message(role=Role.ASSISTANT, content="", loss=True, part="react", tool_calls=[OSLO])
    assert message_dict(bare)["tool_calls"][0]["function"]["name"] == "get_weather"
    prose = bare.model_copy(update={"content": "I will look at get_weather first."})
    assert "tool_calls" in message_dict(prose)  # names the tool, but no action line: prose
    react = bare.model_copy(update={"content": 'Thought: check.\nAction: get_weather\nAction Input: {"city": "Oslo"}'})
    assert message_dict(react) == {"role": "assistant", "content": react.content}
    text_only = bare.model_copy(update={"content": "Act: click[Buy Now]", "tool_calls": []})
    assert message_dict(text_only) == {"role": "assistant", "content": "Act: click[Buy Now]"}


def test_call_free_samples_show_the_tool_block_unless_the_data_spells_every_call_in_text(tokenizer):
    template = load_template("chatml")
    ensure_special_tokens(tokenizer, template)
    negative = Sample(
        id="neg",
        kind="negative",
        messages=[Message(role=Role.USER, content="Hi"), Message(role=Role.ASSISTANT, content="Hello!", loss=True)],
        tools=[WEATHER],
        lineage=Lineage(source="test", source_id="2"),
    )
    spelled = tool_sample().model_copy(
        update={
            "id": "text",
            "messages": [
                Message(role=Role.USER, content="Oslo?"),
                Message(
                    role=Role.ASSISTANT, content='{"city": "Oslo"}', loss=True, part="arguments", tool_calls=[OSLO]
                ),
            ],
        }
    )
    for data, convention, block in (([spelled, negative], "text", False), ([tool_sample(), negative], "native", True)):
        kept, report = tokenize_all(data, tokenizer, template, 4096, check_round_trip=True)
        assert report.call_convention == convention and len(kept) == 2
        assert ("<tools>" in tokenizer.decode(kept[1].input_ids)) is block
        assert "<tools>" not in tokenizer.decode(kept[0].input_ids) or convention == "native"
    # Mixed data: each calling sample keeps its own; call-free ones follow the majority (a tie: native).
    kept, report = tokenize_all([tool_sample(), spelled, negative], tokenizer, template, 4096)
    assert report.call_convention == "native" and report.as_dict()["samples_calling"] == {"native": 1, "text": 1}
    assert ["<tools>" in tokenizer.decode(k.input_ids) for k in kept] == [True, False, True]
    twice = spelled.model_copy(update={"id": "text2"})
    kept, report = tokenize_all([tool_sample(), spelled, twice, negative], tokenizer, template, 4096)
    assert report.call_convention == "text"
    assert ["<tools>" in tokenizer.decode(k.input_ids) for k in kept] == [True, False, False, False]


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_native_templates_render_tools_and_calls(name):
    template = load_template(name)
    assert template.native_calls and template.renders_tools
    messages, _, _ = conversation(tool_sample())
    text = render(template, SpecialTokens(), messages, tools=template_tools(tool_sample()))
    for turn in EXPECTED_TURNS[name]:
        assert turn in text
    if name == "chatml":
        assert "<tools>\n" + json.dumps(template_tools(tool_sample())[0]) + "\n</tools>" in text
        assert text.count("<|im_start|>user\n<tool_response>\n") == 2  # parallel results share one turn
        assert (
            f"<tool_response>\n{OBS_OSLO}\n</tool_response>\n<tool_response>\n{OBS_ROME}\n</tool_response><|im_end|>"
            in text
        )
    else:
        assert '"name": "get_weather"' in text.split("<|eot_id|>")[0]  # tools listed in the system turn
        assert f"<|start_header_id|>ipython<|end_header_id|>\n\n{OBS_ROME}<|eot_id|>" in text


def test_chatml_without_tools_is_plain_chatml():
    template = load_template("chatml")
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    text = render(template, SpecialTokens(), messages)
    assert (
        text == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    )


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_labels_cover_exactly_the_assistant_turns_with_their_calls(name, tokenizer):
    template = load_template(name)
    ensure_special_tokens(tokenizer, template)
    result = tokenize_sample(tool_sample(), tokenizer, template, 4096, check_round_trip=True)
    assert isinstance(result, TokenizedSample), result
    runs = [tokenizer.decode(run) for run in supervised_runs(result)]
    assert runs == EXPECTED_TURNS[name]  # content + calls + end marker, in order, nothing else
    supervised = "".join(runs)
    assert OBS_OSLO not in supervised and OBS_ROME not in supervised  # tool results are context
    assert "Weather in Oslo" not in supervised and "Be brief" not in supervised
    assert result.round_trip_turns == 4 and result.calls_as_text == 0


@pytest.mark.parametrize("name", ["llama2", "agent_flan"])
def test_templates_without_native_calls_train_them_as_text_and_count_them(name, tokenizer):
    template = load_template(name)
    assert not template.native_calls
    tokenized, report = tokenize_all([tool_sample()], tokenizer, template, 4096, check_round_trip=True)
    assert len(tokenized) == 1 and report.calls_as_text == 2
    text = tokenizer.decode([t for t in tokenized[0].labels if t != IGNORE_INDEX])
    assert '{"name": "get_weather", "arguments": {"city": "Rome", "days": 1}}' in text
    assert report.as_dict()["round_trip"] == {"turns_checked": 4, "failed_samples": 0}


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_templates_are_prefix_stable_with_tools_and_ship_a_response_template(name):
    template = load_template(name)
    assert template.response == read_response_template(TEMPLATE_DIR / f"{name}.response.json")
    messages, flags, _ = conversation(tool_sample(), None, template.native_calls)
    tools = template_tools(tool_sample()) if template.renders_tools else None
    text, spans = render_with_spans(template, SpecialTokens(), messages, flags, tools)
    assert len(spans) == 4
    assert round_trip(template, text, spans, messages, tools) == []


# ---- the round-trip gate -----------------------------------------------------------------------


def test_gate_drops_a_turn_that_parses_back_differently(tokenizer):
    template = load_template("chatml")
    ensure_special_tokens(tokenizer, template)
    # Content that spells a Hermes call in text: a server would return it as a call, not as text.
    bad = tool_sample('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    bad = bad.model_copy(update={"id": "bad"})
    result = tokenize_sample(bad, tokenizer, template, 4096, check_round_trip=True)
    assert isinstance(result, Dropped) and result.reason == "round_trip"
    assert result.detail.startswith("message 2: calls: expected ['get_weather', 'get_weather'], parsed")
    # Without the gate it would be trained on.
    assert isinstance(tokenize_sample(bad, tokenizer, template, 4096), TokenizedSample)
    kept, report = tokenize_all([tool_sample(), bad], tokenizer, template, 4096, check_round_trip=True)
    assert [s.id for s in kept] == ["tools1"]
    assert report.dropped == {"round_trip": 1}
    assert report.as_dict()["round_trip"] == {"turns_checked": 4, "failed_samples": 1}
    assert report.dropped_examples["round_trip"][0].startswith("bad: message 2")
    # --strict refuses such data instead of training on the rest.
    assert strict_problem(report, "chatml").startswith("1 of 2 samples fail the round trip with template 'chatml'")
    assert (
        strict_problem(tokenize_all([tool_sample()], tokenizer, template, 4096, check_round_trip=True)[1], "x") is None
    )


def test_gate_sees_content_the_end_marker_cuts_short():
    template = load_template("llama3")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a<|eot_id|>b"}]
    text, spans = render_with_spans(template, SpecialTokens(), messages, [False, True])
    # The parser ends the turn at the first <|eot_id|> and keeps what follows as a second region.
    assert round_trip(template, text, spans, messages) == [(1, "content: expected 'a<|eot_id|>b', parsed 'b'")]


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_content_that_ends_like_a_call_separator_keeps_its_text(name):
    # SQL in the content ends with ';' (Llama 3 separates parallel calls with '; ').
    template = load_template(name)
    call = {"type": "function", "function": {"name": "run_sql", "arguments": {"q": "SELECT 1; SELECT 2"}}}
    content = "The query would be: SELECT COUNT(*) FROM posts;"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": content, "tool_calls": [call, call]}]
    text, spans = render_with_spans(template, SpecialTokens(), messages, [False, True])
    assert round_trip(template, text, spans, messages) == []


def test_gate_compares_arguments_as_json_values():
    template = load_template("chatml")
    call = {"type": "function", "function": {"name": "f", "arguments": {"n": 1, "flag": True}}}
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    text, spans = render_with_spans(template, SpecialTokens(), messages, [False, True])
    assert round_trip(template, text, spans, messages) == []
    # A tool schema that types n as a string: the server's parser casts nothing back, still equal;
    # one that says integer for a string value casts "7" to 7, which is a difference.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"s": {"type": "integer"}}}}}]
    call["function"]["arguments"] = {"s": "7"}
    text, spans = render_with_spans(template, SpecialTokens(), messages, [False, True], tools)
    assert round_trip(template, text, spans, messages, tools)[0][1].startswith("calls: arguments differ")


def test_tokenizer_template_uses_the_tokenizers_response_template(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    own.chat_template = load_template("chatml").source
    assert load_template("tokenizer", own).response is None  # none of its own: the gate cannot run
    own.response_template = read_response_template(TEMPLATE_DIR / "chatml.response.json")
    template = load_template("tokenizer", own)
    assert template.native_calls and template.renders_tools and template.response == own.response_template
    # A --response-template file wins over the tokenizer's.
    path = tmp_path / "r.json"
    path.write_text((TEMPLATE_DIR / "llama2.response.json").read_text())
    assert load_template("tokenizer", own, str(path)).response["start_anchor"] == " [/INST]"
    path.write_text('{"fields": {}}')
    with pytest.raises(TemplateError, match="invalid response template"):
        load_template("chatml", None, str(path))


def test_tokenizer_template_without_its_own_parses_like_transformers_serve_for_the_model_type(tokenizer):
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    own.chat_template = load_template("chatml").source  # Hermes-style calls, as Qwen2.5's template
    assert load_template("tokenizer", own, model_type="llama").response is None  # serve has none for llama
    template = load_template("tokenizer", own, model_type="qwen2")
    assert template.response["start_anchor"] == "<|im_start|>assistant\n"
    messages, flags, _ = conversation(tool_sample())
    tools = template_tools(tool_sample())
    text, spans = render_with_spans(template, SpecialTokens(), messages, flags, tools)
    assert round_trip(template, text, spans, messages, tools) == []


# ---- command line ------------------------------------------------------------------------------


def test_tools_are_on_by_default_and_pass_tools_is_a_deprecated_no_op(tmp_path):
    base = ["--data", "d", "--output", str(tmp_path / "out"), "--model", "m"]
    args = build_parser().parse_args(base)
    assert args.tools and args.round_trip and not args.strict
    assert not build_parser().parse_args([*base, "--no-tools"]).tools
    assert build_parser().parse_args([*base, "--pass-tools"]).tools  # still accepted
    strict_off = build_parser().parse_args([*base, "--strict", "--no-round-trip"])
    with pytest.raises(SystemExit, match="--strict"):
        validate_args(strict_off)


# ---- the audit check ---------------------------------------------------------------------------


def test_audit_round_trip_check_runs_for_a_named_template_only():
    from transforms.quality.checks import CHECKS

    check_cls = CHECKS["round_trip"]
    assert not check_cls().configured()
    check = check_cls({"template": "chatml"})
    assert check.configured()
    assert check.inspect(tool_sample()).flagged is False
    bad = tool_sample("<tool_call>\nnot json\n</tool_call>")
    verdict = check.inspect(bad)
    assert verdict.flagged and verdict.reason == "parse_error" and verdict.excerpt.startswith("message 2")
    assert (
        check.inspect(Sample(id="x", kind="general", messages=[], lineage=Lineage(source="t", source_id="1"))) is None
    )
    llama3 = check_cls({"template": "llama3", "bos_token": "<|begin_of_text|>"})
    assert llama3.inspect(tool_sample()).flagged is False


def test_strict_refuses_a_template_without_a_response_template(tokenizer, tmp_path):
    import subprocess
    import sys

    from train_helpers import REPO

    template = tmp_path / "plain.jinja"  # no plain.response.json beside it
    template.write_text(load_template("chatml").source)
    command = [sys.executable, str(REPO / "train" / "sft.py"), "--data", str(tmp_path / "none")]
    command += [
        "--model-config",
        "c.json",
        "--tokenizer",
        tokenizer.name_or_path,
        "--output",
        str(tmp_path / "o"),
    ]
    done = subprocess.run(
        [*command, "--chat-template", str(template), "--strict"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode != 0
    assert "--strict: template 'plain' has no response template, so the round trip cannot run" in done.stderr
