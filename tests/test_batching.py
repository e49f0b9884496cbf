"""transforms.batching: Arrow batches from JSON rows in C++, equal to the from_pylist reference."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tests.helpers import parse_file
from transforms import batching, write
from transforms.base import Stat, StepContext
from transforms.batching import record_batch, slow_record_batch
from transforms.to_chat import ToChatConfig, to_chat
from transforms.write import EncodeRow, shard_schema, write_shard


def _rows(records: list[dict]) -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode("utf-8") for r in records]


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _real_rows(external, split: str = "os") -> list[bytes]:
    trajectories, failed = parse_file(external("agentinstruct_thudm", f"{split}.shared80.parquet"), "agentinstruct")
    assert not failed
    context = StepContext(step_id="chat")
    encode = EncodeRow()
    rows = []
    for trajectory in trajectories:
        sample = to_chat(trajectory, ToChatConfig(kind="agent"), context)
        rows += [row for _, row in (o for o in encode(sample) if not isinstance(o, Stat))]
    return rows


@pytest.mark.real_data
def test_real_rows_give_the_reference_batch_and_bytes(external):
    rows = _real_rows(external)
    schema = shard_schema()
    for start in range(0, len(rows), 50):
        chunk = rows[start : start + 50]
        fast, slow = record_batch(chunk, schema), slow_record_batch(chunk, schema)
        assert fast.equals(slow)
        assert _ipc(fast) == _ipc(slow)


def test_edge_case_rows_equal_the_reference():
    schema = shard_schema()
    base = json.loads(_rows([{"id": "x"}])[0])
    records = [
        {**base, "id": "a", "kind": "agent", "messages": [], "tools": [], "metadata": "{}"},
        {"id": "b"},  # every other field missing: nulls, null structs (the reference path)
        {"id": "d", "messages": None, "tools": None, "lineage": {"source": "s"}, "counts": {"tokens": 1}},
        {"id": "e", "messages": [None, {"role": "user"}], "lineage": {}, "counts": {}},
        {"id": "f", "messages": [{"role": "user", "tool_calls": None}], "lineage": {"steps": None}, "counts": {}},
        {
            "id": 'c \u2028 \u0000 \t " \\ é 漢字 🙂',
            "kind": None,
            "messages": [
                {"role": "user", "content": "line\nbreak\r\n", "loss": False, "tool_calls": []},
                {
                    "role": "assistant",
                    "content": "",
                    "loss": True,
                    "tool_calls": [{"name": "f", "arguments": '{"a": 1}', "id": None}],
                    "tool_call_id": None,
                },
            ],
            "lineage": {"source": "s", "steps": ["read", "to_chat"], "trajectory_id": ""},
            "counts": {"tokens": 2**62, "supervised_tokens": -1},
        },
    ]
    for record in records:  # each alone (one row with a null struct sends its whole batch the slow way)
        rows = _rows([record])
        fast, slow = record_batch(rows, schema), slow_record_batch(rows, schema)
        assert fast.equals(slow), record["id"]
        assert _ipc(fast) == _ipc(slow), record["id"]
    rows = _rows(records)
    assert _ipc(record_batch(rows, schema)) == _ipc(slow_record_batch(rows, schema))


@pytest.mark.parametrize(
    "record",
    [
        {"id": 5},  # a number where the schema has a string
        {"id": "x", "counts": {"tokens": "7"}},  # a string where the schema has an integer
        {"id": "x", "counts": {"tokens": 2**70}},  # out of int64
        {"id": "x", "messages": {"role": "user"}},  # an object where the schema has a list
    ],
)
def test_rows_the_reference_refuses_are_refused(record):
    schema = shard_schema()
    with pytest.raises((pa.ArrowException, OverflowError)):
        slow_record_batch(_rows([record]), schema)
    with pytest.raises((pa.ArrowException, OverflowError)):
        record_batch(_rows([record]), schema)


def test_fields_outside_the_schema_behave_as_the_reference():
    schema = shard_schema()
    rows = _rows([{"id": "x", "unknown": 1, "lineage": {"source": "s", "extra": [1]}}])
    assert record_batch(rows, schema).equals(slow_record_batch(rows, schema))


def test_floats_take_the_reference_path():
    schema = pa.schema([("id", pa.string()), ("score", pa.float32())])
    assert batching._fast_path(schema) is None
    rows = _rows([{"id": "x", "score": 0.1}, {"id": "y", "score": 1e-46}])
    assert record_batch(rows, schema).equals(slow_record_batch(rows, schema))


@pytest.mark.real_data
def test_real_rows_take_the_fast_path(external, monkeypatch):
    """Samples' rows are parsed by Arrow's JSON reader, never by the per-row reference."""
    rows = _real_rows(external, "kg")[:200]
    assert batching._fast_path(shard_schema()) is not None

    def refuse(*args):
        raise AssertionError("the reference path was taken")

    monkeypatch.setattr(batching, "slow_record_batch", refuse)
    assert record_batch(rows, shard_schema()).num_rows == len(rows)


@pytest.mark.real_data
def test_write_shard_builds_its_batches_with_record_batch(external, tmp_path, monkeypatch):
    """write_shard goes through record_batch (no json.loads per row in the serial tail) and
    writes the bytes the reference path writes."""
    rows = sorted(_real_rows(external, "db")[:120])
    schema = shard_schema()
    calls = []

    def spy(batch_rows, batch_schema):
        calls.append(len(batch_rows))
        return record_batch(batch_rows, batch_schema)

    monkeypatch.setattr(write, "record_batch", spy)
    info = write_shard(str(tmp_path / "fast.arrow"), iter(rows), schema, 50)
    assert calls == [50, 50, 20]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, len(rows), 50):
            writer.write_batch(slow_record_batch(rows[start : start + 50], schema))
    assert (tmp_path / "fast.arrow").read_bytes() == sink.getvalue().to_pybytes()
    assert info.rows == len(rows)


# --- record coders: JSON parsed by json.loads, then validated ------------------------------------


@pytest.mark.real_data
def test_coders_decode_real_records_as_pydantic_json_validation_does(external):
    from schemas import Sample, Trajectory
    from transforms.coders import SampleCoder, TrajectoryCoder

    trajectories, _ = parse_file(external("agentinstruct_thudm", "webshop.shared80.parquet"), "agentinstruct")
    samples = [to_chat(t, ToChatConfig(kind="agent"), StepContext(step_id="chat")) for t in trajectories]
    for coder, model, records in ((TrajectoryCoder(), Trajectory, trajectories), (SampleCoder(), Sample, samples)):
        for record in records:
            encoded = coder.encode(record)
            decoded = coder.decode(encoded)
            assert decoded == model.model_validate_json(encoded) == record
            assert coder.encode(decoded) == encoded


def test_coders_still_validate_what_they_decode():
    from pydantic import ValidationError

    from transforms.coders import SampleCoder

    coder = SampleCoder()
    with pytest.raises(ValidationError):
        coder.decode(b'{"id": 5}')  # a record that is not a Sample
    with pytest.raises(ValueError):
        coder.decode(b'{"id": "x"')  # not JSON


def test_a_strict_model_keeps_pydantic_json_validation():
    import datetime

    from pydantic import BaseModel, ConfigDict

    from transforms.coders import PydanticJsonCoder

    class When(BaseModel):
        model_config = ConfigDict(strict=True)
        at: datetime.date

    class WhenCoder(PydanticJsonCoder):
        model = When

    # strict JSON validation parses the date string; strict Python validation would refuse it
    assert WhenCoder().decode(b'{"at": "2024-01-02"}') == When(at=datetime.date(2024, 1, 2))


def test_coders_do_not_use_pydantic_json_validation_for_records(monkeypatch):
    """The slow path (model_validate_json, about 3x slower on these records) is not taken."""
    from schemas import Sample
    from transforms.coders import SampleCoder

    sample = Sample.model_validate(json.loads(SampleCoder().encode(_a_sample())))

    def refuse(*args, **kwargs):
        raise AssertionError("model_validate_json was called")

    monkeypatch.setattr(Sample, "model_validate_json", refuse)
    assert SampleCoder().decode(SampleCoder().encode(sample)) == sample


def _a_sample():
    from schemas import Lineage, Message, Sample

    return Sample(
        id="s1",
        kind="agent",
        messages=[Message(role="user", content="hi"), Message(role="assistant", content="hello", loss=True)],
        lineage=Lineage(source="test", source_id="1", trajectory_id="t1"),
    )
