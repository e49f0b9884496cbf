"""``agentmill export``: OpenAI and ShareGPT (LLaMA-Factory) JSON Lines from an output; the
structured calls survive read -> to_chat -> write -> export on glaive's real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.export import ExportReport, SkipSample, export_records, to_openai, to_sharegpt
from schemas import Lineage, Message, Role, Sample, ToolCall, ToolSpec
from tests.helpers import parse_file, read_chat_write, run, write_spec


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


WEATHER = ToolSpec(name="w", description="weather", parameters={"type": "object", "properties": {}})
CALLS = [
    ToolCall(name="w", arguments={"city": "Oslo"}, id="call_0"),
    ToolCall(name="w", arguments={"city": "Rome"}, id="call_1"),
]


def parallel_sample(loss_first_answer: bool = True) -> Sample:
    return Sample(
        id="s1",
        kind="agent",
        messages=[
            Message(role=Role.SYSTEM, content="Be brief."),
            Message(role=Role.USER, content="Weather in Oslo and Rome?"),
            Message(role=Role.ASSISTANT, content="", loss=True, tool_calls=CALLS),
            Message(role=Role.TOOL, content="3", tool_call_id="call_0", name="w"),
            Message(role=Role.TOOL, content="20", tool_call_id="call_1", name="w"),
            Message(role=Role.ASSISTANT, content="3 and 20.", loss=loss_first_answer),
            Message(role=Role.USER, content="Thanks!"),
            Message(role=Role.ASSISTANT, content="You're welcome.", loss=True),
        ],
        tools=[WEATHER],
        lineage=Lineage(source="src", source_id="a"),
    )


def test_openai_export_has_tool_calls_with_json_text_arguments_and_linked_results():
    record = to_openai(parallel_sample(), ExportReport("openai"))
    messages = record["messages"]
    assert messages[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "w", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Rome"}'}},
        ],
    }
    assert messages[3] == {"role": "tool", "content": "3", "tool_call_id": "call_0", "name": "w"}
    assert record["tools"] == [
        {"type": "function", "function": {"name": "w", "description": "weather", "parameters": WEATHER.parameters}}
    ]
    assert not any("train" in m or "weight" in m for m in messages)
    objects = to_openai(parallel_sample(), ExportReport("openai"), arguments="object")
    assert objects["messages"][2]["tool_calls"][1]["function"]["arguments"] == {"city": "Rome"}


def test_loss_flags_become_axolotl_train_or_weight_keys_and_their_absence_is_reported():
    record = to_openai(parallel_sample(loss_first_answer=False), ExportReport("openai"), loss_key="train")
    assert [m["train"] for m in record["messages"]] == [False, False, True, False, False, False, False, True]
    record = to_openai(parallel_sample(), ExportReport("openai"), loss_key="weight")
    assert [m["weight"] for m in record["messages"]] == [0, 0, 1, 0, 0, 1, 0, 1]
    report = ExportReport("openai")
    to_openai(parallel_sample(loss_first_answer=False), report)
    assert report.lost == {"unsupervised_assistant_turn_without_loss_key": 1}


def test_sharegpt_export_is_llamafactory_shaped_and_reads_back_to_the_same_calls(tmp_path):
    report = ExportReport("sharegpt")
    record = to_sharegpt(parallel_sample(), report)
    assert record["system"] == "Be brief." and json.loads(record["tools"])[0]["name"] == "w"
    assert llamafactory_alternates(record["conversations"])
    assert [t["from"] for t in record["conversations"]] == [
        "human",
        "function_call",
        "observation",
        "gpt",
        "human",
        "gpt",
    ]
    assert json.loads(record["conversations"][1]["value"]) == [c.model_dump(exclude={"id"}) for c in CALLS]
    assert json.loads(record["conversations"][2]["value"]) == ["3", "20"]
    assert not report.lost and not report.skipped
    (traj,), bad = parse_file(write_jsonl(tmp_path / "s.jsonl", [record]), "sharegpt")
    assert not bad
    assert [c for t in traj.turns for c in t.tool_calls] == CALLS
    assert [(t.tool_call_id, t.text) for t in traj.turns if t.role is Role.TOOL] == [("call_0", "3"), ("call_1", "20")]


def test_sharegpt_drops_what_it_cannot_hold_and_counts_it():
    sample = parallel_sample()
    messages = list(sample.messages)
    messages[2] = messages[2].model_copy(update={"content": "Let me look."})  # prose beside the calls
    messages.insert(6, Message(role=Role.USER, content="And Paris?"))  # two user turns in a row
    report = ExportReport("sharegpt")
    record = to_sharegpt(sample.model_copy(update={"messages": messages}), report)
    assert report.lost == {"prose_beside_calls": 1, "joined_turns": 1}
    assert record["conversations"][4]["value"] == "And Paris?\n\nThanks!"
    orphan = sample.model_copy(
        update={"messages": [Message(role=Role.USER, content="q"), Message(role=Role.TOOL, content="r")]}
    )
    with pytest.raises(SkipSample, match="tool_result_without_call"):
        to_sharegpt(orphan, ExportReport("sharegpt"))
    no_reply = sample.model_copy(update={"messages": [*sample.messages[1:5], Message(role=Role.USER, content="ok?")]})
    with pytest.raises(SkipSample, match="user_turn_after_tool_result"):
        to_sharegpt(no_reply, ExportReport("sharegpt"))
    report = ExportReport("sharegpt")
    assert list(export_records([orphan, parallel_sample()], "sharegpt", report)) and report.skipped == {
        "tool_result_without_call": 1
    }
    assert (report.samples, report.written, report.calls) == (2, 1, 2)


def test_calls_spelled_in_text_are_exported_as_the_trainer_renders_them():
    """An align-style sample (tool choice and arguments as text, the call also carried in
    tool_calls) is exported as text with no structured call and no tools, as train/sft.py gives
    it to the template; a native sample of the same output keeps both."""
    call = ToolCall(name="w", arguments={"city": "Oslo"}, id="call_0")
    aligned = parallel_sample().model_copy(
        update={
            "messages": [
                Message(role=Role.USER, content="Weather in Oslo?"),
                Message(role=Role.ASSISTANT, content="I will use w.", loss=True, part="tool"),
                Message(role=Role.USER, content="Go on.", part="elicit"),
                Message(
                    role=Role.ASSISTANT, content='{"city": "Oslo"}', loss=True, part="arguments", tool_calls=[call]
                ),
                Message(role=Role.TOOL, content="3", tool_call_id="call_0", name="w"),
                Message(role=Role.ASSISTANT, content="3 degrees.", loss=True, part="prose"),
            ]
        }
    )
    report = ExportReport("openai", convention="mixed")
    (text, native) = export_records([aligned, parallel_sample()], "openai", report)
    assert not any("tool_calls" in m for m in text["messages"]) and text["tools"] == []
    assert text["messages"][3]["content"] == '{"city": "Oslo"}'
    assert native["tools"] and "tool_calls" in native["messages"][2]
    assert (report.calls, report.calls_in_text) == (2, 1)
    shared = to_sharegpt(aligned, ExportReport("sharegpt"))
    assert [t["from"] for t in shared["conversations"]] == ["human", "gpt", "human", "gpt", "observation", "gpt"]
    # in an output whose calls are all text, a call-free sample gets no tools (train/sft.py withholds
    # them, so a tool block never teaches "never call"); a sample with native calls keeps its tools
    call_free = parallel_sample().model_copy(
        update={"messages": [Message(role=Role.USER, content="Hi"), Message(role=Role.ASSISTANT, content="Hello.")]}
    )
    assert to_openai(call_free, ExportReport("openai", convention="text"))["tools"] == []
    assert to_openai(parallel_sample(), ExportReport("openai", convention="text"))["tools"]


def test_export_command_writes_both_targets_from_an_output(tmp_path):
    record = {
        "conversations": [
            {"from": "human", "value": "weather in Oslo and Rome?"},
            {"from": "function_call", "value": json.dumps([c.model_dump(exclude={"id"}) for c in CALLS])},
            {"from": "observation", "value": '["3", "20"]'},
            {"from": "gpt", "value": "3 and 20."},
        ],
        "tools": json.dumps([WEATHER.model_dump()]),
    }
    data = write_jsonl(tmp_path / "in.jsonl", [record])
    spec = write_spec(tmp_path, read_chat_write("sharegpt", [str(data)]))
    run(spec, tmp_path / "out")
    for target in ("openai", "sharegpt"):
        path = tmp_path / f"{target}.jsonl"
        assert (
            main(["export", str(tmp_path / "out"), "--to", target, "--output", str(path), "--loss-key", "train"]) == 0
        )
        (line,) = path.read_text().splitlines()
        exported = json.loads(line)
        assert ("messages" if target == "openai" else "conversations") in exported
    assert main(["export", str(tmp_path / "nowhere"), "--to", "openai", "--output", str(tmp_path / "x.jsonl")]) == 2


def llamafactory_alternates(conversations: list[dict]) -> bool:
    """LLaMA-Factory's ShareGPT rule: human or observation at even positions, gpt or
    function_call at odd ones, an even number of turns."""
    prompt, reply = ("human", "observation"), ("gpt", "function_call")
    return len(conversations) % 2 == 0 and all(
        turn["from"] in (prompt if i % 2 == 0 else reply) for i, turn in enumerate(conversations)
    )


def _openai_calls(record: dict) -> list[tuple[str, object]]:
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for m in record["messages"]
        for c in m.get("tool_calls", [])
    ]


@pytest.mark.real_data
def test_every_glaive_call_survives_read_chat_write_and_export(external, tmp_path: Path):
    """Holdout-style: each glaive conversation's structured calls, read straight from the source
    JSON, come out of read -> to_chat -> write -> export (openai and sharegpt) with the same count,
    names and arguments, conversation by conversation."""
    files = sorted(external("llamafactory_glaive_toolcall").glob("*.json"))
    expected: list[list[tuple[str, object]]] = []
    for path in files:
        for conversation in json.loads(path.read_text(encoding="utf-8")):
            calls = []
            for turn in conversation["conversations"]:
                if turn["from"] == "function_call":
                    value = json.loads(turn["value"])
                    for call in value if isinstance(value, list) else [value]:
                        arguments = call.get("arguments", {})
                        calls.append((call["name"], json.loads(arguments) if isinstance(arguments, str) else arguments))
            expected.append(calls)
    assert sum(map(len, expected)) > 300
    spec = write_spec(tmp_path, read_chat_write("sharegpt", [str(p) for p in files]))
    spec_data = spec.read_text().replace("num_shards: 2", "num_shards: 1")
    spec.write_text(spec_data)
    summary = run(spec, tmp_path / "out")
    assert summary.manifest.output.num_rows == len(expected)  # nothing filtered: every turn supervised
    openai = tmp_path / "openai.jsonl"
    sharegpt = tmp_path / "sharegpt.jsonl"
    assert main(["export", str(tmp_path / "out"), "--to", "openai", "-o", str(openai), "--with-ids"]) == 0
    assert main(["export", str(tmp_path / "out"), "--to", "sharegpt", "-o", str(sharegpt), "--with-ids"]) == 0
    by_source = {}
    for line in openai.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        by_source[record["id"]] = _openai_calls(record)
    from pipelines.auditing import samples_of_shards, shard_files

    samples = list(samples_of_shards(shard_files(str(tmp_path / "out"))))
    got = {}
    for sample in samples:
        path, index = sample.lineage.source_id.rsplit(":", 1)
        got[(path, int(index))] = by_source[sample.id]
    flat = {}
    i = 0
    for path in files:
        for index in range(len(json.loads(path.read_text(encoding="utf-8")))):
            flat[(path.name, index)] = expected[i]
            i += 1
    assert got == flat
    shared = [json.loads(line) for line in sharegpt.read_text(encoding="utf-8").splitlines()]
    ids = {s.id: s for s in samples}
    with_calls = {s.id for s in samples if any(m.tool_calls for m in s.messages)}
    assert with_calls <= {record["id"] for record in shared}  # ShareGPT skips only call-free samples
    for record in shared:
        assert llamafactory_alternates(record["conversations"]), record["id"]
        calls = []
        for turn in record["conversations"]:
            if turn["from"] == "function_call":
                value = json.loads(turn["value"])
                calls += [(c["name"], c["arguments"]) for c in (value if isinstance(value, list) else [value])]
        assert calls == by_source[record["id"]], ids[record["id"]].lineage.source_id
