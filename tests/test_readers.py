"""Readers on hand-written fixtures: every format, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from schemas import Role, ToolCall
from tests.helpers import parse_file
from transforms.files import InputError, resolve_paths
from transforms.read import ReadConfig

AGENTINSTRUCT = {
    "id": "os_7",
    "conversations": [
        {"from": "human", "loss": None, "value": "instructions"},
        {"from": "gpt", "loss": False, "value": "Ok."},
        {"from": "human", "loss": None, "value": "count files"},
        {"from": "gpt", "loss": True, "value": "Think: ls.\n\nAct: bash\n\n```bash\nls\n```"},
    ],
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_agentinstruct_keeps_loss_flags_and_takes_task_from_id(tmp_path):
    (traj,), bad = parse_file(write_jsonl(tmp_path / "a.jsonl", [AGENTINSTRUCT]), "agentinstruct")
    assert not bad
    assert [t.role for t in traj.turns] == [Role.USER, Role.ASSISTANT, Role.USER, Role.ASSISTANT]
    assert [t.loss for t in traj.turns] == [False, False, False, True]
    assert (traj.source_id, traj.task) == ("os_7", "os")


def test_parquet_gz_and_json_array_give_the_same_trajectory(tmp_path):
    pq.write_table(pa.Table.from_pylist([AGENTINSTRUCT]), tmp_path / "a.parquet")
    (tmp_path / "a.json").write_text(json.dumps([AGENTINSTRUCT]))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(AGENTINSTRUCT) + "\n")
    results = [parse_file(tmp_path / name, "agentinstruct")[0] for name in ("a.parquet", "a.json", "a.jsonl.gz")]
    dumps = [[t.model_dump(exclude={"metadata"}) for t in r] for r in results]
    assert dumps[0] == dumps[1] == dumps[2]
    assert len(results[0]) == 1
    assert results[0][0].metadata["location"] == "a.parquet:row 0"


def test_sharegpt_glaive_function_calls_observations_and_tools(tmp_path):
    record = {
        "conversations": [
            {"from": "human", "value": "weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"t": 3}'},
            {"from": "gpt", "value": "3 degrees"},
        ],
        "tools": '[{"name": "get_weather", "description": "weather", "parameters": {"type": "object"}}]',
    }
    (traj,), bad = parse_file(write_jsonl(tmp_path / "g.jsonl", [record]), "sharegpt")
    assert not bad
    assert [t.role for t in traj.turns] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert traj.turns[1].tool_calls == [ToolCall(name="get_weather", arguments={"city": "Oslo"}, id="call_0")]
    assert traj.turns[1].text == ""  # the call is structured, not kept twice
    assert (traj.turns[2].tool_call_id, traj.turns[2].name, traj.turns[2].text) == ("call_0", "get_weather", '{"t": 3}')
    assert [t.name for t in traj.tools] == ["get_weather"]
    assert traj.source_id == "g.jsonl:0"  # no id field: file and index


def test_openai_tool_calls_reward_success_and_metadata(tmp_path):
    record = {
        "item_id": "webshop_3",
        "task_name": "webshop",
        "reward": 0.5,
        "success": 0,
        "model": "m1",
        "messages": [
            {"role": "user", "content": "buy socks"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "socks"}'}},
                    {"id": "c2", "type": "function", "function": {"name": "click", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "content": "ok"},
            {"role": "assistant", "content": {"answer": "done"}, "reasoning_content": "because"},
        ],
    }
    (traj,), bad = parse_file(write_jsonl(tmp_path / "o.jsonl", [record]), "openai")
    assert not bad
    assert [[c.name for c in t.tool_calls] for t in traj.turns] == [[], ["search", "click"], [], []]
    assert traj.turns[1].tool_calls[0] == ToolCall(name="search", arguments={"q": "socks"}, id="c1")
    assert (traj.turns[2].tool_call_id, traj.turns[2].name) == ("c1", "search")  # the first unanswered call
    assert (traj.reward, traj.success, traj.task, traj.source_id) == (0.5, False, "webshop", "webshop_3")
    assert traj.metadata["model"] == "m1"
    assert traj.turns[-1].text == "done" and traj.turns[-1].thought == "because"


def test_parallel_calls_stay_in_one_turn_and_results_link_to_them(tmp_path):
    """OpenAI tool_calls with and without ids, a legacy function_call list, and a glaive/ShareGPT
    function_call list (LLaMA-Factory's parallel form) with a list observation: one assistant
    turn per source message, every call with an id, every result linked to its call."""
    openai_record = {
        "messages": [
            {"role": "user", "content": "weather in Oslo and Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "w", "arguments": '{"city": "Oslo"}'}},
                    {"type": "function", "function": {"name": "w", "arguments": '{"city": "Rome"}'}},
                ],
            },
            {"role": "tool", "content": "3"},
            {"role": "tool", "content": "20"},
            {"role": "assistant", "function_call": [{"name": "t", "arguments": "{}"}]},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            {"role": "assistant", "content": "3 and 20 degrees."},
        ]
    }
    (traj,), bad = parse_file(write_jsonl(tmp_path / "o.jsonl", [openai_record]), "openai")
    assert not bad
    assert [[c.id for c in t.tool_calls] for t in traj.turns] == [[], ["call_0", "call_1"], [], [], ["call_2"], [], []]
    assert [(t.tool_call_id, t.name) for t in traj.turns if t.role is Role.TOOL] == [
        ("call_0", "w"),
        ("call_1", "w"),
        ("call_2", "t"),
    ]
    glaive_record = {
        "conversations": [
            {"from": "human", "value": "weather in Oslo and Rome?"},
            {
                "from": "function_call",
                "value": '[{"name": "w", "arguments": {"city": "Oslo"}}, {"name": "w", "arguments": {"city": "Rome"}}]',
            },
            {"from": "observation", "value": '[{"t": 3}, {"t": 20}]'},
            {"from": "gpt", "value": "3 and 20 degrees."},
        ]
    }
    (traj,), bad = parse_file(write_jsonl(tmp_path / "g.jsonl", [glaive_record]), "sharegpt")
    assert not bad
    assert [t.role for t in traj.turns] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL, Role.ASSISTANT]
    assert traj.turns[1].tool_calls == [
        ToolCall(name="w", arguments={"city": "Oslo"}, id="call_0"),
        ToolCall(name="w", arguments={"city": "Rome"}, id="call_1"),
    ]
    assert [(t.tool_call_id, t.text) for t in traj.turns[2:4]] == [("call_0", '{"t": 3}'), ("call_1", '{"t": 20}')]


def test_one_tool_message_with_the_results_of_parallel_calls_is_split_per_call(tmp_path):
    """LLaMA-Factory's reason_tool_use: parallel tool_call parts, then one tool message whose
    content is a JSON list of {tool_call_id, name, content}: one linked tool turn per call."""
    results = [{"tool_call_id": "x", "name": "area", "content": "7.1"}, {"name": "area", "content": {"a": 28}}]
    record = {
        "messages": [
            {"role": "user", "content": "areas of r=1.5 and r=3?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_call", "value": '{"name": "area", "arguments": {"r": 1.5}}'},
                    {"type": "tool_call", "value": '{"name": "area", "arguments": {"r": 3}}'},
                ],
            },
            {"role": "tool", "content": [{"type": "text", "value": json.dumps(results)}]},
            {"role": "assistant", "content": "7.1 and 28."},
        ]
    }
    (traj,), bad = parse_file(write_jsonl(tmp_path / "r.jsonl", [record]), "openai")
    assert not bad
    assert [(t.role, t.tool_call_id, t.text) for t in traj.turns[2:4]] == [
        (Role.TOOL, "call_0", "7.1"),
        (Role.TOOL, "call_1", '{"a": 28}'),
    ]


def test_trajectory_ids_tell_apart_trajectories_that_differ_only_in_their_calls(tmp_path):
    def record(city: str) -> dict:
        call = json.dumps({"name": "w", "arguments": {"city": city}})
        return {
            "id": "same",
            "conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": call}],
        }

    (a,), _ = parse_file(write_jsonl(tmp_path / "a.jsonl", [record("Oslo")]), "sharegpt")
    (b,), _ = parse_file(write_jsonl(tmp_path / "b.jsonl", [record("Rome")]), "sharegpt")
    assert a.id != b.id


def test_openai_typed_content_parts(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "hi"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "reasoning", "value": "think"},
                    {"type": "tool_call", "value": '{"name": "f", "arguments": {"a": 1}}'},
                ],
            },
        ]
    }
    (traj,), _ = parse_file(write_jsonl(tmp_path / "p.jsonl", [record]), "openai")
    assert traj.turns[1].thought == "think" and traj.turns[1].tool_calls[0].arguments == {"a": 1}


def test_agent_flan_tolerates_type_instead_of_loss(tmp_path):
    records = [
        {
            "id": "x1",
            "conversation": [
                {"role": "user", "content": "q", "loss": False},
                {"role": "assistant", "content": "a", "loss": True},
            ],
        },
        {
            "id": "x2",
            "conversation": [
                {"role": "user", "content": "q", "type": "query"},
                {"role": "assistant", "content": "a", "type": "answer"},
            ],
        },
    ]
    trajs, bad = parse_file(write_jsonl(tmp_path / "f.jsonl", records), "agent_flan")
    assert not bad and len(trajs) == 2
    assert [t.loss for t in trajs[1].turns] == [False, True]
    assert trajs[1].metadata["turn_types"] == ["query", "answer"]


def test_jsonl_mapping_single_turn_and_message_list(tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "1 and 2", "output": "3", "uid": "u1"}]))
    (traj,), _ = parse_file(
        alpaca, "jsonl", mapping={"prompt": ["instruction", "input"], "response": "output"}, id_field="uid"
    )
    assert [t.text for t in traj.turns] == ["Add\n\n1 and 2", "3"]
    assert [t.loss for t in traj.turns] == [False, True] and traj.source_id == "u1"

    dialog = write_jsonl(
        tmp_path / "d.jsonl",
        [{"meta": {"score": 0.9}, "dialog": [{"who": "me", "text": "hi"}, {"who": "bot", "text": "hello"}]}],
    )
    (traj,), _ = parse_file(
        dialog,
        "jsonl",
        mapping={"messages": "dialog", "role": "who", "content": "text"},
        roles={"me": "user"},
        reward_field="meta.score",
    )
    assert [t.role for t in traj.turns] == [Role.USER, Role.ASSISTANT] and traj.reward == 0.9


@pytest.mark.parametrize(
    ("content", "reason", "location"),
    [
        (b'{"id": "os_1", "conversations": [{"from": "human", "val', "invalid_json", "t.jsonl:line 1"),
        (b'{"id": "os_1", "conversations": "not a list"}', "invalid_field", "t.jsonl:line 1"),
        (b'{"id": "os_1"}', "missing_field", "t.jsonl:line 1"),
        (b'{"id": "os_1", "conversations": [{"from": "wizard", "value": "x"}]}', "unknown_role", "t.jsonl:line 1"),
        (b'{"id": "os_1", "conversations": [{"from": "gpt", "value": 42}]}', "invalid_field", "t.jsonl:line 1"),
        (
            b'{"id": "os_1", "conversations": [{"from": "gpt", "value": "x", "loss": "yes"}]}',
            "invalid_field",
            "t.jsonl:line 1",
        ),
        (b'{"id": "os_1", "conversations": []}', "empty_conversation", "t.jsonl:line 1"),
        (b"[1, 2]", "not_an_object", "t.jsonl:line 1"),
        (b'{"id": "os_1", "conversations": [{"from": "human", "value": "caf\xe9"}]}', "invalid_utf8", "t.jsonl:line 1"),
        (b"", "empty_file", "t.jsonl"),
        (b"\n\n  \n", "empty_file", "t.jsonl"),
    ],
)
def test_bad_records_become_dead_letters_with_reason_and_location(tmp_path, content, reason, location):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    good, bad = parse_file(path, "agentinstruct")
    assert not good
    (failure,) = bad
    assert (failure.reason, failure.location) == (reason, location)
    assert failure.detail


def test_good_lines_survive_bad_neighbours_with_line_numbers(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good_line = json.dumps(AGENTINSTRUCT)
    path.write_text("\n".join([good_line, "{broken", good_line.replace("os_7", "os_8"), '{"id": "x"}']) + "\n")
    good, bad = parse_file(path, "agentinstruct")
    assert [t.source_id for t in good] == ["os_7", "os_8"]
    assert [(f.reason, f.location) for f in bad] == [
        ("invalid_json", "mixed.jsonl:line 2"),
        ("missing_field", "mixed.jsonl:line 4"),
    ]


def test_broken_tool_call_json_and_tools_are_dead_letters(tmp_path):
    call = {
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": '{"name": "f", "arguments": {'},
        ]
    }
    tools = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[{"}
    _, bad = parse_file(write_jsonl(tmp_path / "c.jsonl", [call, tools]), "sharegpt")
    assert [f.reason for f in bad] == ["invalid_tool_call_json", "invalid_tools"]


def test_huge_records_are_dead_letters(tmp_path):
    big = dict(AGENTINSTRUCT, conversations=[{"from": "gpt", "value": "x" * 5000}])
    _, bad = parse_file(write_jsonl(tmp_path / "h.jsonl", [big]), "agentinstruct", max_record_chars=1000)
    assert [f.reason for f in bad] == ["record_too_large"]
    _, bad = parse_file(write_jsonl(tmp_path / "h2.jsonl", [big]), "agentinstruct", max_record_bytes=100)
    assert [f.reason for f in bad] == ["record_too_large"]


def test_unreadable_parquet_is_one_dead_letter(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    _, bad = parse_file(path, "agentinstruct")
    assert [f.reason for f in bad] == ["unreadable_file"]


def test_json_array_file_with_syntax_error_is_one_dead_letter(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"id": 1},')
    _, bad = parse_file(path, "agentinstruct")
    assert [(f.reason, f.location) for f in bad] == [("invalid_json", "bad.json")]


def test_missing_paths_and_unsupported_extensions_are_errors(tmp_path):
    with pytest.raises(InputError, match="matched no files"):
        resolve_paths(["nothing/*.jsonl"], str(tmp_path))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="unsupported extension"):
        resolve_paths(["*.csv"], str(tmp_path))


def test_read_config_is_validated_early():
    with pytest.raises(ValidationError, match="mapping"):
        ReadConfig(format="jsonl", paths=["x.jsonl"])
    with pytest.raises(ValidationError):
        ReadConfig(format="csv", paths=["x"])
    with pytest.raises(ValidationError):
        ReadConfig(format="openai", paths=["x"], colour="blue")


def test_task_comes_from_the_id_only_for_agentinstruct(tmp_path):
    record = {"id": "call_1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (traj,), _ = parse_file(write_jsonl(tmp_path / "o.jsonl", [record]), "openai")
    assert traj.task is None


def test_files_of_the_same_name_in_different_folders_get_distinct_source_ids(tmp_path):
    from transforms.files import common_folder
    from transforms.read import ReadFile

    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    paths = []
    for group in ("G1", "G2"):
        (tmp_path / group).mkdir()
        paths.append(str(write_jsonl(tmp_path / group / "10.jsonl", [record])))
    reader = ReadFile(ReadConfig(format="sharegpt", paths=paths), "s", common_folder(paths))
    first, second = (next(iter(reader(p))) for p in paths)
    assert (first.source_id, second.source_id) == ("G1/10.jsonl:0", "G2/10.jsonl:0")
    assert first.metadata["location"] == "G1/10.jsonl:line 1"
    assert first.id != second.id or first.source_id != second.source_id
