"""Input integrity: damaged inputs and hostile records end as dead letters with a location and a
reason, never as silent loss, silently changed values or a crashed run (issue 15, items 2, 3, 7,
13 and the input parts of 15)."""

from __future__ import annotations

import gzip
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import ValidationError

from pipelines.report import input_integrity_lines, render_markdown
from schemas import PipelineSpec
from tests.conftest import REPO
from tests.helpers import parse_file, rejected, run, write_spec
from transforms.align import Align
from transforms.base import RecordError, StepContext
from transforms.files import iter_records
from transforms.read import MAX_JSON_DEPTH

ROWS = 300


def chat(i: int, **extra) -> dict:
    messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    return {"id": f"r{i}", "messages": messages, **extra}


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def gzip_cut_after(records: list[dict], keep: int) -> bytes:
    """A gzip stream of ``records`` cut right after the first ``keep`` lines (a sync flush there,
    so the cut stream decompresses to exactly those lines and then ends without its trailer)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
        handle.write(jsonl(records[:keep]))
        handle.flush()
        cut = buffer.tell()
        handle.write(jsonl(records[keep:]))
    return buffer.getvalue()[:cut]


def spec_with(directory: Path, steps: list[dict], publish: dict) -> Path:
    """A spec whose ``publish:`` block lets the publish guard pass a run that is mostly dead
    letters on purpose (when the spec has that block)."""
    path = write_spec(directory, steps)
    if "publish" in PipelineSpec.model_fields:
        body = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**body, "publish": publish}, sort_keys=False))
    return path


def reasons(failures) -> list[str]:
    return [f.reason for f in failures]


# -- item 2: truncated or corrupt compressed input ---------------------------------------------


def test_gzip_cut_at_a_line_boundary_is_a_dead_letter_with_the_count_read(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip_cut_after([chat(i) for i in range(ROWS)], 150))
    good, bad = parse_file(path, "openai")
    assert len(good) == 150  # what was read before the cut is kept
    assert reasons(bad) == ["truncated_input"]
    assert bad[0].location == "cut.jsonl.gz"
    assert "150 records were read" in bad[0].detail and "end-of-stream" in bad[0].detail


def test_gzip_without_its_trailer_and_with_a_bad_crc_are_dead_letters(tmp_path):
    whole = gzip.compress(jsonl([chat(i) for i in range(ROWS)]), mtime=0)
    (tmp_path / "no_trailer.jsonl.gz").write_bytes(whole[:-8])  # every line there, CRC and size gone
    damaged = bytearray(whole)
    damaged[-8] ^= 0xFF  # the CRC
    (tmp_path / "crc.jsonl.gz").write_bytes(bytes(damaged))
    (tmp_path / "array.json.gz").write_bytes(gzip.compress(json.dumps([chat(i) for i in range(5)]).encode())[:-8])
    good, bad = parse_file(tmp_path / "no_trailer.jsonl.gz", "openai")
    assert (len(good), reasons(bad)) == (ROWS, ["truncated_input"])
    good, bad = parse_file(tmp_path / "crc.jsonl.gz", "openai")
    assert (len(good), reasons(bad)) == (ROWS, ["corrupt_input"])
    assert "CRC" in bad[0].detail and f"{ROWS} records were read" in bad[0].detail
    good, bad = parse_file(tmp_path / "array.json.gz", "openai")
    assert (len(good), reasons(bad)) == (0, ["truncated_input"])


def test_whole_gzip_files_still_read_completely(tmp_path):
    members = gzip.compress(jsonl([chat(i) for i in range(3)])) + gzip.compress(jsonl([chat(i) for i in range(3, 5)]))
    (tmp_path / "multi.jsonl.gz").write_bytes(members)  # concatenated members are one stream
    good, bad = parse_file(tmp_path / "multi.jsonl.gz", "openai")
    assert (len(good), bad) == (5, [])


def test_a_truncated_input_shows_in_the_ledger_and_the_run_summary(tmp_path):
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip_cut_after([chat(i) for i in range(ROWS)], 150))
    spec = write_spec(
        tmp_path,
        [
            {"id": "read", "type": "read", "config": {"format": "openai", "paths": "cut.jsonl.gz"}},
            {"id": "chat", "type": "to_chat", "inputs": ["read"]},
            {"id": "write", "type": "write", "inputs": ["chat"]},
        ],
    )
    summary = run(spec, tmp_path / "out")
    ledger = summary.manifest.steps["read"]
    assert (ledger.passed, ledger.dead_letter) == (150, {"truncated_input": 1})
    assert summary.manifest.output.num_rows == 150
    (letter,) = rejected(tmp_path / "out", "read")
    assert letter["reason"] == "truncated_input" and "150 records were read" in letter["detail"]
    (line,) = input_integrity_lines(summary.manifest)
    assert "read" in line and "truncated_input 1" in line and "rejected/read.jsonl" in line
    assert line in render_markdown(summary.manifest)
    assert line in (tmp_path / "out" / "report.md").read_text()


# -- item 3: records routed to an undeclared port ----------------------------------------------

CUSTOM_STEP = """
from schemas import Trajectory
from transforms.base import RecordStep, Routed


class RouteNowhere:
    def __call__(self, trajectory):
        yield Routed("nowhere", trajectory)


class RouteStep(RecordStep):
    type_name = "route_nowhere"
    input_type = Trajectory
    output_type = Trajectory
    extra_outputs = {"kept": Trajectory}

    def processor(self):
        return RouteNowhere()
"""


def test_records_routed_to_an_undeclared_port_are_dead_letters(tmp_path, monkeypatch):
    (tmp_path / "route_steps.py").write_text(CUSTOM_STEP)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "in.jsonl").write_bytes(jsonl([chat(i) for i in range(6)]))
    spec = spec_with(
        tmp_path,
        [
            {"id": "read", "type": "read", "config": {"format": "openai", "paths": "in.jsonl"}},
            {"id": "route", "type": "route_steps:RouteStep", "inputs": ["read"]},
            {"id": "chat", "type": "to_chat", "inputs": ["route"]},
            {"id": "write", "type": "write", "inputs": ["chat"]},
        ],
        publish={"allow_empty": True, "max_dead_letter_share": 1.0},
    )
    summary = run(spec, tmp_path / "out")
    ledger = summary.manifest.steps["route"]
    assert (ledger.in_, ledger.passed, ledger.dead_letter) == (6, 0, {"undeclared_port": 6})
    letters = rejected(tmp_path / "out", "route")
    assert len(letters) == 6 and all("'route'" in r["detail"] and "'nowhere'" in r["detail"] for r in letters)


# -- item 7: align's guarantees, and non-finite numbers ----------------------------------------


def fact_trajectory():
    from schemas import Role, ToolSpec, Trajectory, Turn, trajectory_id

    turns = [
        Turn(role=Role.USER, text="Find a cat fact.", loss=False),
        Turn(
            role=Role.ASSISTANT, text='Thought: call it.\nAction: get_fact\nAction Input: {"animal": "cat"}', loss=True
        ),
        Turn(role=Role.TOOL, text="cats nap", loss=False),
        Turn(role=Role.ASSISTANT, text="Thought: done.\nFinal Answer: cats nap", loss=True),
    ]
    tool = ToolSpec(name="get_fact", parameters={"type": "object", "properties": {"animal": {"type": "string"}}})
    return Trajectory(id=trajectory_id("t", "1", turns), source="t", source_id="1", turns=turns, tools=[tool])


def test_an_arguments_phrase_that_does_not_parse_is_a_dead_letter(tmp_path):
    (tmp_path / "args.yaml").write_text('arguments: ["Args: {{ arguments_json }} please"]\n')
    step = Align({"keep_format_share": 0.0, "templates": "args.yaml"}, StepContext("align", base_dir=str(tmp_path)))
    step.check()
    with pytest.raises(RecordError) as error:
        list(step.processor()(fact_trajectory()))
    assert error.value.reason == "arguments_not_json" and "Args: " in error.value.detail
    # the default book keeps the guarantee
    default = Align({"keep_format_share": 0.0}, StepContext("align")).processor()
    (sample,) = [o for o in default(fact_trajectory()) if hasattr(o, "messages")]
    (arguments,) = [m for m in sample.messages if m.part == "arguments"]
    assert json.loads(arguments.content) == arguments.tool_calls[0].arguments == {"animal": "cat"}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_dead_letters_at_read_time(tmp_path, number):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": f'{{"x": {number}}}'}}
    asks = '{"role": "user", "content": "q"}'
    records = [
        f'{{"messages": [{asks}, {{"role": "assistant", "content": null, "tool_calls": [{json.dumps(call)}]}}]}}',
        f'{{"reward": {number}, "messages": [{asks}, {{"role": "assistant", "content": "a"}}]}}',
        json.dumps(chat(0)),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(records) + "\n")
    good, bad = parse_file(tmp_path / "in.jsonl", "openai")
    assert len(good) == 1
    assert reasons(bad) == ["non_finite_number", "non_finite_number"]
    assert [f.location for f in bad] == ["in.jsonl:line 1", "in.jsonl:line 2"]


def test_non_finite_numbers_in_a_json_array_cost_only_their_item(tmp_path):
    text = (
        "[" + ",".join([json.dumps(chat(0)), json.dumps(chat(1))[:-1] + ', "reward": NaN}', json.dumps(chat(2))]) + "]"
    )
    (tmp_path / "in.json").write_text(text)
    good, bad = parse_file(tmp_path / "in.json", "openai")
    assert [t.source_id for t in good] == ["r0", "r2"]
    assert [(f.reason, f.location) for f in bad] == [("non_finite_number", "in.json:item 1")]


def test_a_nan_reward_from_parquet_is_a_dead_letter(tmp_path):
    table = pa.table(
        {
            "id": ["a", "b"],
            "messages": [chat(0)["messages"]] * 2,
            "reward": [0.5, math.nan],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    good, bad = parse_file(tmp_path / "in.parquet", "openai")
    assert [t.reward for t in good] == [0.5]
    assert [(f.reason, f.location) for f in bad] == [("non_finite_number", "in.parquet:row 1")]


# -- item 13: lone surrogates and deep nesting -------------------------------------------------


ANSWER = '{"role": "assistant", "content": "a"}'


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_lone_surrogates_and_deep_json_are_dead_letters_not_a_crashed_run(tmp_path):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": json.dumps(nested(260))}}
    arguments = {
        "id": "d",
        "messages": [chat(4)["messages"][0], {"role": "assistant", "content": None, "tool_calls": [call]}],
    }

    def raw(head: str, question: str) -> str:  # JSON text with its escapes as written
        return "{" + head + ', "messages": [{"role": "user", "content": "' + question + '"}, ' + ANSWER + "]}"

    lines = [
        raw('"id": "x\\ud800"', "q"),
        raw('"id": "t"', "q\\udfff"),
        raw('"id": "m", "note": "\\ud800"', "q"),
        json.dumps(chat(3, tools=[{"name": "f", "parameters": nested(260)}])),
        json.dumps(arguments),
        raw('"id": "ok"', "\\ud83d\\ude00"),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    spec = spec_with(
        tmp_path,
        [
            {"id": "read", "type": "read", "config": {"format": "openai", "paths": "in.jsonl"}},
            {"id": "chat", "type": "to_chat", "inputs": ["read"]},
            {"id": "write", "type": "write", "inputs": ["chat"]},
        ],
        publish={"max_dead_letter_share": 1.0},
    )
    summary = run(spec, tmp_path / "out")  # used to crash at serialization
    assert summary.manifest.output.num_rows == 1  # the valid surrogate pair (an emoji) is kept
    letters = {r["location"]: r for r in rejected(tmp_path / "out", "read")}
    assert {loc: r["reason"] for loc, r in letters.items()} == {
        "in.jsonl:line 1": "invalid_unicode",
        "in.jsonl:line 2": "invalid_unicode",
        "in.jsonl:line 3": "invalid_unicode",
        "in.jsonl:line 4": "too_deeply_nested",
        "in.jsonl:line 5": "too_deeply_nested",
    }
    assert "\\ud800" in letters["in.jsonl:line 3"]["payload"]  # written as an escape
    assert str(MAX_JSON_DEPTH) in letters["in.jsonl:line 5"]["detail"]


# -- item 15: duplicate inputs, parquet row groups, BOM, content null ---------------------------


def test_an_input_named_twice_is_refused_at_validation():
    steps = [{"id": "r", "type": "read"}, {"id": "w", "type": "write", "inputs": ["r", "r"]}]
    with pytest.raises(ValidationError, match="'r' is named more than once"):
        PipelineSpec.model_validate({"name": "x", "steps": steps})


def test_a_corrupt_parquet_row_group_costs_only_its_rows(tmp_path):
    table = pa.table({"id": [f"r{i}" for i in range(30)], "messages": [chat(i)["messages"] for i in range(30)]})
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=10, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    start = column.data_page_offset
    data[start : start + 24] = b"\xff" * 24  # the page header of row group 1's messages
    path.write_bytes(bytes(data))
    records = list(iter_records(str(path), 1 << 20))
    good = [r.obj["id"] for r in records if not hasattr(r, "reason")]
    bad = [r for r in records if hasattr(r, "reason")]
    assert good == [f"r{i}" for i in (*range(10), *range(20, 30))]
    assert [(f.reason, f.location) for f in bad] == [("corrupt_row_group", "in.parquet:row group 1")]
    assert "10 of the row group's 10 rows (rows 10-19) were lost" in bad[0].detail
    assert [r.location for r in records if not hasattr(r, "reason")][-1] == "in.parquet:row 29"


def test_a_utf8_byte_order_mark_is_tolerated(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "bom.jsonl").write_bytes(bom + jsonl([chat(i) for i in range(3)]))
    (tmp_path / "bom.json").write_bytes(bom + json.dumps([chat(i) for i in range(3)]).encode())
    (tmp_path / "bom.jsonl.gz").write_bytes(gzip.compress(bom + jsonl([chat(i) for i in range(3)])))
    for name in ("bom.jsonl", "bom.json", "bom.jsonl.gz"):
        good, bad = parse_file(tmp_path / name, "openai")
        assert ([t.source_id for t in good], bad) == (["r0", "r1", "r2"], []), name


def test_an_assistant_message_with_null_content_and_no_call_is_a_dead_letter(tmp_path):
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}
    (tmp_path / "in.jsonl").write_bytes(jsonl([empty, chat(1)]))
    good, bad = parse_file(tmp_path / "in.jsonl", "openai")
    assert [t.source_id for t in good] == ["r1"]
    assert [(f.reason, f.location) for f in bad] == [("empty_assistant_message", "in.jsonl:line 1")]
    assert "turn 1" in bad[0].detail


def test_the_command_prints_the_damaged_input_line(tmp_path):
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip_cut_after([chat(i) for i in range(ROWS)], 150))
    spec = write_spec(
        tmp_path,
        [
            {"id": "read", "type": "read", "config": {"format": "openai", "paths": "cut.jsonl.gz"}},
            {"id": "chat", "type": "to_chat", "inputs": ["read"]},
            {"id": "write", "type": "write", "inputs": ["chat"]},
        ],
    )
    command = [sys.executable, "-m", "pipelines.cli", "run", str(spec), "--output", str(tmp_path / "out"), "-q"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "input integrity: step 'read' read damaged input (truncated_input 1)" in " ".join(result.stderr.split())
