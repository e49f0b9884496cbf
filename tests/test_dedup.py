"""dedup: normalised-conversation keys, the smallest-id representative, ledger and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipelines.run import run_spec
from schemas import Lineage, Message, Role, Sample, ToolCall
from schemas.arrow import ArrowCodec
from transforms.dedup import DedupConfig, dedup_key, normalise, sort_pair


def sample(sid: str, *turns: tuple[str, str], system: str | None = None) -> Sample:
    messages = [Message(role=Role.SYSTEM, content=system)] if system else []
    messages += [Message(role=Role(role), content=text, loss=role == "assistant") for role, text in turns]
    return Sample(id=sid, kind="general", messages=messages, lineage=Lineage(source="t", source_id=sid))


def test_normalise_collapses_whitespace_and_case():
    config = DedupConfig()
    assert normalise("  Hello\n\tWORLD  ", config) == "hello world"
    assert normalise("Hello, world!", DedupConfig(strip_punctuation=True)) == "hello world"
    assert normalise("Hello", DedupConfig(lowercase=False)) == "Hello"


def test_key_equal_for_duplicates_and_different_otherwise():
    config = DedupConfig()
    a = sample("a", ("user", "Who are you?"), ("assistant", "I am Vicuna."))
    b = sample("b", ("user", "who  are you?\n"), ("assistant", "I am   Vicuna."), system="Be helpful.")
    assert dedup_key(a, config) == dedup_key(b, config)
    assert dedup_key(a, DedupConfig(ignore_system=False)) != dedup_key(b, DedupConfig(ignore_system=False))
    assert dedup_key(a, DedupConfig(lowercase=False)) != dedup_key(b, DedupConfig(lowercase=False))
    swapped_roles = sample("c", ("assistant", "Who are you?"), ("user", "I am Vicuna."))
    assert dedup_key(a, config) != dedup_key(swapped_roles, config)
    longer = sample("d", ("user", "Who are you?"), ("assistant", "I am Vicuna."), ("user", "Bye"))
    assert dedup_key(a, config) != dedup_key(longer, config)
    # the boundary between messages matters: "a b" + "c" is not "a" + "b c"
    assert dedup_key(sample("e", ("user", "a b"), ("assistant", "c")), config) != dedup_key(
        sample("f", ("user", "a"), ("assistant", "b c")), config
    )


def test_tool_calls_are_part_of_the_key():
    def with_call(name: str) -> Sample:
        base = sample("x", ("user", "weather?"))
        call = Message(role=Role.ASSISTANT, content="", loss=True, tool_call=ToolCall(name=name, arguments={}))
        return base.model_copy(update={"messages": [*base.messages, call]})

    assert dedup_key(with_call("get_weather"), DedupConfig()) != dedup_key(with_call("get_time"), DedupConfig())
    assert dedup_key(with_call("get_weather"), DedupConfig(include_tool_calls=False)) == dedup_key(
        with_call("get_time"), DedupConfig(include_tool_calls=False)
    )


def test_representative_is_the_smallest_id_whatever_the_order():
    members = [sample(sid, ("user", "hi")) for sid in ("c3", "a1", "b2")]
    for order in (members, list(reversed(members))):
        pairs = sorted(sort_pair(s, DedupConfig()) for s in order)
        assert len({partition for partition, _ in pairs}) == 1  # one set, one partition
        assert [json.loads(payload)["id"] for _, (_, payload) in pairs] == ["a1", "b2", "c3"]


def test_config_rejects_unknown_keys():
    with pytest.raises(ValidationError):
        DedupConfig(keep="largest_id")


def _conversation(i: int, text: str) -> dict:
    return {
        "id": f"conv_{i}",
        "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": f"answer {text}"}],
    }


def _run(tmp_path: Path, records: list[dict], name: str, beam_args: list[str] | None = None):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": name,
                "steps": [
                    {
                        "id": "read",
                        "type": "read",
                        "config": {"format": "openai", "source": "chat", "paths": str(data)},
                    },
                    {"id": "chat", "type": "to_chat", "inputs": ["read"], "config": {"kind": "general"}},
                    {"id": "dedup", "type": "dedup", "inputs": ["chat"]},
                    {"id": "write", "type": "write", "inputs": ["dedup"]},
                ],
            }
        )
    )
    out = tmp_path / f"{name}_out"
    summary = run_spec(str(spec), str(out), beam_args)
    codec = ArrowCodec(Sample)
    with pa.ipc.open_stream(str(out / "data-00000-of-00001.arrow")) as stream:
        samples = [codec.from_row(row) for row in stream.read_all().to_pylist()]
    rejected = [json.loads(line) for line in (out / "rejected" / "dedup.jsonl").read_text().splitlines()]
    return summary.manifest, samples, rejected, (out / "data-00000-of-00001.arrow").read_bytes()


def test_pipeline_keeps_one_per_duplicate_set(tmp_path):
    texts = ["What is 2+2?", "what is  2+2?", "WHAT IS 2+2?", "Name a colour.", "Name a colour.", "Unique one."]
    records = [_conversation(i, t) for i, t in enumerate(texts)]
    records.append(_conversation(0, "What is 2+2?"))  # the very same record twice
    manifest, samples, rejected, _ = _run(tmp_path, records, "dedup")
    ledger = manifest.steps["dedup"]
    assert ledger.in_ == 7
    assert ledger.passed == ledger.emitted == 3
    assert ledger.filtered == {"duplicate": 4}
    assert ledger.stats == {"duplicate_sets": 2}
    assert manifest.ratios["dedup"]["duplicates"] == 4
    contents = sorted(s.messages[0].content.lower().split()[0] for s in samples)
    assert contents == ["name", "unique", "what"]
    # the kept sample of each set has the smallest id of the set
    chat_ids: dict[str, list[str]] = {}
    for r in rejected:
        assert r["reason"] == "duplicate" and r["disposition"] == "filtered"
        kept_id = r["detail"].split()[2]
        chat_ids.setdefault(kept_id, []).append(r["record_id"])
    kept = {s.id for s in samples}
    for kept_id, dropped in chat_ids.items():
        assert kept_id in kept
        assert all(kept_id <= d for d in dropped)


def test_result_does_not_depend_on_input_order(tmp_path):
    texts = ["a b c", "A  B C", "d e f", "a b c", "g h", "D E F"]
    records = [_conversation(i, t) for i, t in enumerate(texts)]
    _, forward, _, _ = _run(tmp_path, records, "forward")
    _, backward, _, _ = _run(tmp_path, list(reversed(records)), "backward")
    # the same representatives (ids and conversations); only the reader's file location differs
    assert [s.id for s in forward] == [s.id for s in backward]
    assert [s.messages for s in forward] == [s.messages for s in backward]
    assert len(forward) == 3
