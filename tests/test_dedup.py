"""dedup: normalised-conversation keys, the smallest-id representative, ledger and determinism;
near mode (MinHash/LSH clusters) on constructed and real prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipelines.run import run_spec
from schemas import Lineage, Message, Role, Sample, ToolCall
from schemas.arrow import ArrowCodec
from tests.helpers import MULTI_PROCESS, PORTABLE
from transforms.dedup import (
    DedupConfig,
    NearConfig,
    cluster_assignments,
    dedup_key,
    near_keys,
    near_text,
    normalise,
    sort_pair,
)


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
        call = Message(role=Role.ASSISTANT, content="", loss=True, tool_calls=[ToolCall(name=name, arguments={})])
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


def _run(
    tmp_path: Path,
    records: list[dict],
    name: str,
    beam_args: list[str] | None = None,
    config: dict | None = None,
):
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
                    {"id": "dedup", "type": "dedup", "inputs": ["chat"], "config": config or {}},
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
    rejected_file = out / "rejected" / "dedup.jsonl"
    rejected = [json.loads(line) for line in rejected_file.read_text().splitlines()] if rejected_file.exists() else []
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


# --- near mode ------------------------------------------------------------------------------------


def test_near_text_by_scope():
    s = sample("a", ("user", "Hi there"), ("assistant", "Hello!"), ("user", "Bye"), system="Be nice.")
    assert near_text(s, "first_user") == "Hi there"
    assert near_text(s, "user") == "Hi there\nBye"
    assert near_text(s, "conversation") == "Hi there\nHello!\nBye"
    assert near_text(sample("b", ("assistant", "Only me")), "first_user") == ""


def test_near_config():
    assert DedupConfig(mode="near").near == NearConfig()
    assert DedupConfig(mode="near", near={"compare": "user", "threshold": 0.7}).near.compare == "user"
    with pytest.raises(ValidationError, match="need mode: near"):
        DedupConfig(near={"threshold": 0.7})
    with pytest.raises(ValidationError):
        DedupConfig(mode="near", near={"jaccard": 0.7})
    with pytest.raises(ValidationError):
        DedupConfig(mode="near", near={"threshold": 1.0})


def test_clusters_keep_the_smallest_node_and_skip_texts_without_words():
    near = NearConfig()
    samples = [
        sample("c", ("user", "What is up?"), ("assistant", "one")),
        sample("a", ("user", "what is UP"), ("assistant", "two")),
        sample("b", ("user", "Tell me about the weather on Mars today."), ("assistant", "three")),
        sample("d", ("user", "?!"), ("assistant", "no words")),
        sample("e", ("user", "?!"), ("assistant", "no words either")),
    ]
    pairs = [near_keys(s, near) for s in samples]
    assert [len(keys) // 8 for _, keys in pairs] == [9, 9, 9, 0, 0]  # 9 bands of 13 rows at 0.8 / 128
    rows = list(cluster_assignments(pairs))
    assert len(rows) == 2
    kept = {payload.decode().split("\t")[0].split("\0")[0] for _, (_, payload) in rows}
    assert kept == {"a"}
    # the same clusters whatever the order of the pairs
    assert sorted(cluster_assignments(list(reversed(pairs)))) == sorted(rows)


DRAGON = (
    "Write a short story for children about a young dragon who lives in a small fishing village by the sea, "
    "is afraid of fire, and learns from the baker's daughter how to bake bread in the old stone oven every"
)  # 41 word tokens
NEAR_TEXTS = [
    "What is up?",  # 0
    "what is up",  # 1: the same words
    "What is up?",  # 2
    DRAGON + " morning.",  # 3
    DRAGON + " evening.",  # 4: 39 of 41 distinct shingles shared (Jaccard 0.95: LSH candidates with probability 0.998)
    "Write a haiku about the sea at dawn, with a seagull in it.",  # 5
    "Write a limerick about a cat who learned to play chess in Paris.",  # 6
    "Summarise the French revolution in three sentences for a child.",  # 7
]


def test_near_pipeline_ledger_detail_and_kept_ids(tmp_path):
    records = [_conversation(i, t) for i, t in enumerate(NEAR_TEXTS)]
    records.append(_conversation(7, NEAR_TEXTS[7]))  # the same conversation again (another line: another id)
    manifest, samples, rejected, _ = _run(tmp_path, records, "near", config={"mode": "near"})
    ledger = manifest.steps["dedup"]
    assert ledger.in_ == 9 and ledger.passed == ledger.emitted == 5
    assert ledger.filtered == {"near_duplicate": 4} and ledger.dead_letter == {}
    summary = manifest.ratios["dedup"]
    assert summary["mode"] == "near" and summary["compare"] == "first_user"
    assert (summary["bands"], summary["rows"]) == (9, 13)
    assert summary["near_duplicates"] == 4 and summary["clusters"] == 3 and summary["cluster_members"] == 7
    assert summary["identical_copies"] == 0 and summary["no_text"] == 0
    kept = {s.id: s.messages[0].content for s in samples}
    assert sorted({t.lower().rstrip("?") for t in kept.values()}) == sorted(
        {NEAR_TEXTS[i].lower().rstrip("?") for i in (0, 5, 6, 7)}
        | {next(t for t in kept.values() if "dragon" in t).lower().rstrip("?")}
    )
    clusters: dict[str, list[str]] = {}
    for r in rejected:
        assert r["reason"] == "near_duplicate" and r["disposition"] == "filtered"
        kept_id = r["detail"].split()[3]
        assert kept_id in kept and kept_id <= r["record_id"]  # equal: the same conversation twice
        assert "first_user text; MinHash/LSH, Jaccard threshold 0.8; cluster of" in r["detail"]
        clusters.setdefault(kept_id, []).append(json.loads(r["payload"])["messages"][1]["content"])
    # each cluster keeps its smallest id: one "what is up", one dragon story, one French revolution
    up = [k for k, text in kept.items() if text.lower().startswith("what is up")]
    dragon = [k for k, text in kept.items() if "dragon" in text]
    assert len(up) == 1 and len(dragon) == 1
    assert sorted(len(v) for v in clusters.values()) == [1, 1, 2] and len(clusters[up[0]]) == 2


def test_near_keep_pass_filters_identical_copies_of_one_record():
    """Two copies of one record (the same id and JSON: e.g. one file read by two steps) share a
    node: the first is kept, the second filtered as its copy."""
    from transforms.beam.dedup import NearDoFn
    from transforms.dedup import near_sort_pair

    near = NearConfig()
    one = sample("a", ("user", "Name three rivers in Africa and their lengths."))
    other = sample("b", ("user", "Completely unrelated words here for a change."))
    rows = sorted(pair for s in (one, other, one) for partition, pair in [near_sort_pair(s)])
    fn = NearDoFn("near", near)
    fn.start_bundle()
    outputs = list(fn.process((0, rows)))
    kept = [o for o in outputs if isinstance(o, Sample)]
    assert sorted(s.id for s in kept) == ["a", "b"]
    (copy,) = [o for o in outputs if not isinstance(o, Sample)]
    assert "near duplicate of a (an identical copy of it)" in copy.value[1]
    assert fn.acct.counts[("stat", "identical_copies")] == 1 and fn.acct.counts[("in", "")] == 3


def test_near_result_is_the_same_whatever_the_order_and_runner(tmp_path):
    records = [_conversation(i, t) for i, t in enumerate(NEAR_TEXTS)]
    _, forward, _, shard = _run(tmp_path, records, "fwd", config={"mode": "near"})
    _, backward, _, _ = _run(tmp_path, list(reversed(records)), "bwd", config={"mode": "near"})
    assert [s.id for s in forward] == [s.id for s in backward]
    for folder, args in (("multi", MULTI_PROCESS), ("portable", PORTABLE)):
        (tmp_path / folder).mkdir()
        manifest, _, _, other = _run(tmp_path / folder, records, "fwd", args, config={"mode": "near"})
        assert other == shard  # the same file name, so the same source ids: byte-identical shards
        assert manifest.steps["dedup"].filtered == {"near_duplicate": 3}


@pytest.mark.real_data
def test_near_mode_collapses_the_repeated_real_prompts(tmp_path, external):
    """FastChat's dummy set repeats "What is up?" 167 times (with different follow-ups): near
    mode on the first user turn keeps one; alpaca's distinct instructions stay."""
    dummy = external("fastchat", "data", "dummy_conversation.json")
    alpaca = external("llamafactory_general_demos", "alpaca_en_demo.json")
    spec = tmp_path / "real.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "real",
                "audit": {"enabled": False},  # the dummy set's identity claims are not this test's subject
                "steps": [
                    {"id": "dummy", "type": "read", "config": {"format": "sharegpt", "paths": str(dummy)}},
                    {
                        "id": "alpaca",
                        "type": "read",
                        "config": {
                            "format": "jsonl",
                            "paths": str(alpaca),
                            "mapping": {"prompt": ["instruction", "input"], "response": "output"},
                        },
                    },
                    {"id": "chat", "type": "to_chat", "inputs": ["dummy", "alpaca"], "config": {"kind": "general"}},
                    {"id": "exact", "type": "dedup", "inputs": ["chat"]},
                    {"id": "near", "type": "dedup", "inputs": ["exact"], "config": {"mode": "near"}},
                    {"id": "write", "type": "write", "inputs": ["near"]},
                ],
            }
        )
    )
    out = tmp_path / "out"
    manifest = run_spec(str(spec), str(out)).manifest
    codec = ArrowCodec(Sample)
    with pa.ipc.open_stream(str(out / "data-00000-of-00001.arrow")) as stream:
        samples = [codec.from_row(row) for row in stream.read_all().to_pylist()]
    firsts = [near_text(s, "first_user").lower() for s in samples]
    assert firsts.count("what is up?") == 1
    summary = manifest.ratios["near"]
    assert summary["in"] == manifest.steps["exact"].passed == 1485
    # no first user turn is left twice: the 448 exact first-turn repeats (in 51 groups) all go
    assert len(set(firsts)) == len(firsts)
    removed = summary["near_duplicates"]
    assert removed == summary["in"] - summary["kept"] and summary["cluster_members"] == summary["clusters"] + removed
    # beyond them only LSH candidates at Jaccard 0.75 ("Are you based on davinci?" beside
    # "... davinci-001?", "... davinci-003?": each such group of 8 joins with probability 0.2,
    # depending on the hash function; measured: 449 / 51 with SHA-1, 450 / 50 with xxHash32)
    assert 448 <= removed <= 448 + 8 * 6 and 51 - 6 <= summary["clusters"] <= 51
    kept_first = {s.id: near_text(s, "first_user").lower() for s in samples}
    rejected = [json.loads(line) for line in (out / "rejected" / "near.jsonl").read_text().splitlines()]
    assert all(r["reason"] == "near_duplicate" and r["record_id"] > r["detail"].split()[3] for r in rejected)
    for r in rejected:  # a removed prompt is its kept prompt, or a davinci variant of it
        dropped = near_text(Sample.model_validate_json(r["payload"]), "first_user").lower()
        kept = kept_first[r["detail"].split()[3]]
        assert dropped == kept or ("davinci" in dropped and "davinci" in kept)


# --- trajectories ---------------------------------------------------------------------------------


def test_trajectory_key_is_the_conversation_without_ids_or_system_turns():
    from schemas import Trajectory, Turn

    def trajectory(source_id: str, *turns: Turn) -> Trajectory:
        return Trajectory(id=f"id-{source_id}", source="s", source_id=source_id, turns=list(turns))

    call = ToolCall(id="call_0", name="f", arguments={"x": 1})
    a = trajectory(
        "1",
        Turn(role=Role.SYSTEM, text="A"),
        Turn(role=Role.USER, text="Hi"),
        Turn(role=Role.ASSISTANT, text="", tool_calls=[call]),
    )
    b = trajectory(
        "2",
        Turn(role=Role.SYSTEM, text="B"),
        Turn(role=Role.USER, text="hi "),
        Turn(role=Role.ASSISTANT, text="", tool_calls=[call.model_copy(update={"id": "c9"})]),
    )
    other = trajectory(
        "3",
        Turn(role=Role.USER, text="Hi"),
        Turn(role=Role.ASSISTANT, text="", tool_calls=[call.model_copy(update={"arguments": {"x": 2}})]),
    )
    config = DedupConfig()
    assert dedup_key(a, config) == dedup_key(b, config) != dedup_key(other, config)
    # the same conversation as a sample has the same key
    as_sample = sample("x", ("user", "Hi"), ("assistant", ""))
    as_sample.messages[1].tool_calls = [call]
    assert dedup_key(as_sample, config) == dedup_key(a, config)


def test_dedup_trajectories_keeps_one_of_each_conversation_before_it_fans_out(tmp_path):
    from transforms.dedup import TrajectoryDedupConfig

    texts = ["What is 2+2?", "Name a colour.", "what is  2+2?", "Name a colour.", "Unique one."]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(_conversation(i, t)) + "\n" for i, t in enumerate(texts)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "unique",
                "steps": [
                    {
                        "id": "read",
                        "type": "read",
                        "config": {"format": "openai", "source": "chat", "paths": str(data)},
                    },
                    {"id": "unique", "type": "dedup_trajectories", "inputs": ["read"]},
                    {"id": "chat", "type": "to_chat", "inputs": ["unique"], "config": {"kind": "general"}},
                    {"id": "write", "type": "write", "inputs": ["chat"]},
                ],
            }
        )
    )
    summary = run_spec(str(spec), str(tmp_path / "out"), None)
    ledger = summary.manifest.steps["unique"]
    assert (ledger.in_, ledger.passed, ledger.filtered, ledger.stats) == (5, 3, {"duplicate": 2}, {"duplicate_sets": 2})
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected" / "unique.jsonl").read_text().splitlines()]
    # the kept trajectory of each set has the smallest id; the copy is filtered with its id
    assert len(rejected) == 2 and all(r["detail"].split()[2] < r["record_id"] for r in rejected)
    assert summary.manifest.steps["chat"].in_ == 3
    with pytest.raises(ValidationError, match="exact duplicates only"):
        TrajectoryDedupConfig(mode="near")
