"""decontaminate: n-gram coverage against evaluation sets on constructed overlaps."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipelines.errors import SpecError
from pipelines.run import run_spec
from schemas import Lineage, Message, Role, Sample
from schemas.arrow import ArrowCodec
from transforms.base import Filtered, Stat
from transforms.decontaminate import (
    DecontaminateConfig,
    DecontaminateFn,
    NgramIndex,
    build_index,
    eval_texts,
    tokens,
)

EVAL_QUESTION = (
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences "
    "and must-see attractions."
)  # 19 tokens
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore"


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def sample(*turns: tuple[str, str], system: str = "You are a helpful, respectful and honest assistant.") -> Sample:
    messages = [Message(role=Role.SYSTEM, content=system)]
    messages += [Message(role=Role(role), content=text, loss=role == "assistant") for role, text in turns]
    return Sample(id="s", kind="general", messages=messages, lineage=Lineage(source="t", source_id="s"))


def index_of(*texts: str, n: int = 10) -> NgramIndex:
    index = NgramIndex(n, ["eval"])
    for text in texts:
        index.add(0, text)
    return index


def test_tokens_are_lowercased_whitespace_words():
    assert tokens("Hello,  World\nagain") == ["hello,", "world", "again"]


def test_coverage_counts_tokens_inside_matching_ngrams():
    index = index_of(words(12))  # eval text: w0 .. w11
    covered, total, matched = index.coverage([words(12)])
    assert (covered, total, matched) == (12, 12, ["eval"])
    # 10 matching tokens inside 30
    covered, total, _ = index.coverage([f"{words(10)} {words(20, 'x')}"])
    assert (covered, total) == (10, 30)
    # 9 shared tokens are not a 10-gram
    covered, _, matched = index.coverage([f"{words(9)} {words(20, 'x')}"])
    assert covered == 0 and matched == []
    # case and spacing do not matter
    assert index.coverage([words(12).upper().replace(" ", "   ")])[0] == 12
    # n-grams do not span messages
    assert index.coverage([words(5), " ".join(f"w{i}" for i in range(5, 12))])[0] == 0
    # short messages count in the total
    assert index.coverage([words(12), "ok"])[:2] == (12, 13)


def test_eval_texts_from_strings_fields_and_turns():
    assert eval_texts("a question", ["text"]) == ["a question"]
    assert eval_texts({"turns": ["q1", "q2"], "category": "writing"}, ["turns"]) == ["q1", "q2"]
    assert eval_texts({"turns": [{"content": "q1"}]}, ["turns"]) == ["q1"]
    assert eval_texts({"meta": {"text": "deep"}}, ["meta.text"]) == ["deep"]
    assert eval_texts({"prompt": "p", "input": "i"}, ["prompt", "input"]) == ["p", "i"]
    assert eval_texts({"other": "x"}, ["text"]) == []


def _fn(tmp_path: Path, **config) -> DecontaminateFn:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"question_id": 81, "turns": [EVAL_QUESTION]}) + "\n")
    cfg = DecontaminateConfig(eval_sets=[{"name": "mt", "paths": str(eval_file), "fields": ["turns"]}], **config)
    return DecontaminateFn(cfg, [[str(eval_file)]])


def _outcome(fn: DecontaminateFn, s: Sample):
    results = list(fn(s))
    stats = {r.name: r.value for r in results if isinstance(r, Stat)}
    (main,) = [r for r in results if not isinstance(r, Stat)]
    return main, stats


def test_copied_eval_question_is_contaminated(tmp_path):
    fn = _fn(tmp_path)
    dirty = sample(("user", EVAL_QUESTION), ("assistant", "Aloha!"))  # 18 of 19 tokens covered
    result, stats = _outcome(fn, dirty)
    assert isinstance(result, Filtered) and result.reason == "contaminated"
    assert "coverage 0.9474 > 0.8" in result.detail and "18/19" in result.detail and "mt" in result.detail
    assert stats["dirty"] == 1 and stats["covered_tokens"] == 18 and stats["tokens"] == 19


def test_partial_overlap_is_kept_and_counted(tmp_path):
    fn = _fn(tmp_path, annotate="contamination")
    half = sample(("user", EVAL_QUESTION), ("assistant", FILLER))  # 18 of 35 covered
    result, stats = _outcome(fn, half)
    assert isinstance(result, Sample) and stats["ambiguous"] == 1
    assert result.metadata["contamination"] == pytest.approx(18 / 35, abs=1e-6)
    clean, stats = _outcome(fn, sample(("user", "Tell me a joke about cats."), ("assistant", FILLER)))
    assert isinstance(clean, Sample) and stats["clean"] == 1 and "contamination" in clean.metadata
    # the system prompt is ignored by default, so it cannot dilute coverage
    padded = sample(("user", EVAL_QUESTION), ("assistant", "Aloha!"), system=FILLER * 3)
    assert isinstance(_outcome(fn, padded)[0], Filtered)
    # ... unless asked for
    with_system = _fn(tmp_path, roles=["system", "user", "assistant"])
    assert isinstance(_outcome(with_system, padded)[0], Sample)


def test_threshold_and_n_are_configurable(tmp_path):
    half = sample(("user", EVAL_QUESTION), ("assistant", FILLER))
    assert isinstance(_outcome(_fn(tmp_path, threshold=0.5), half)[0], Filtered)
    # 8 words of the question: below a 10-gram, but covered by 5-grams
    fragment = sample(("user", "Compose an engaging travel blog post about a"))
    assert _outcome(_fn(tmp_path), fragment)[1]["covered_tokens"] == 0
    assert isinstance(_outcome(_fn(tmp_path, n=5), fragment)[0], Filtered)
    # an evaluation set too short for n is an error, not a silent no-op
    with pytest.raises(ValueError, match="gives no 20-gram"):
        _fn(tmp_path, n=20).setup()


def test_config_and_eval_set_errors(tmp_path):
    with pytest.raises(ValidationError):
        DecontaminateConfig(eval_sets=[])
    with pytest.raises(ValidationError):
        DecontaminateConfig(eval_sets=[{"paths": "a.jsonl"}], threshold=0.1, clean_below=0.5)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": 1, "answer": "no text field here at all ok"}) + "\n")
    cfg = DecontaminateConfig(eval_sets=[{"paths": str(empty)}])
    with pytest.raises(ValueError, match="gives no 10-gram"):
        build_index(cfg, [[str(empty)]])


def _write_spec(tmp_path: Path, eval_paths: str) -> Path:
    general = [
        {
            "id": "copy",
            "messages": [{"role": "user", "content": EVAL_QUESTION}, {"role": "assistant", "content": "Aloha!"}],
        },
        {
            "id": "half",
            "messages": [{"role": "user", "content": EVAL_QUESTION}, {"role": "assistant", "content": FILLER}],
        },
        {
            "id": "clean",
            "messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": FILLER}],
        },
        {
            "id": "second",
            "messages": [
                {"role": "user", "content": "Then " + words(30, "z")},
                {"role": "assistant", "content": "Ok."},
            ],
        },
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in general))
    (tmp_path / "evals").mkdir(exist_ok=True)
    (tmp_path / "evals" / "mt.jsonl").write_text(json.dumps({"turns": [EVAL_QUESTION, "Rewrite it."]}) + "\n")
    (tmp_path / "evals" / "plain.json").write_text(json.dumps([words(30, "z")]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "decontaminate",
                "steps": [
                    {
                        "id": "read",
                        "type": "read",
                        "config": {"format": "openai", "source": "chat", "paths": "chat.jsonl"},
                    },
                    {"id": "chat", "type": "to_chat", "inputs": ["read"], "config": {"kind": "general"}},
                    {
                        "id": "decon",
                        "type": "decontaminate",
                        "inputs": ["chat"],
                        "config": {
                            "eval_sets": [
                                {"name": "mt_bench", "paths": eval_paths, "fields": ["turns"]},
                                {"name": "plain", "paths": "evals/plain.json"},
                            ]
                        },
                    },
                    {"id": "write", "type": "write", "inputs": ["decon"]},
                ],
            }
        )
    )
    return spec


def test_pipeline_ledger_rejected_and_manifest(tmp_path):
    spec = _write_spec(tmp_path, "evals/mt.jsonl")
    out = tmp_path / "out"
    manifest = run_spec(str(spec), str(out)).manifest
    ledger = manifest.steps["decon"]
    assert ledger.in_ == 4 and ledger.passed == 2
    assert ledger.filtered == {"contaminated": 2}
    summary = manifest.ratios["decon"]
    assert summary["contaminated"] == 2 and summary["eval_sets"] == ["mt_bench", "plain"]
    assert summary["ambiguous"] == 1 and summary["clean"] == 1
    assert sum(summary["coverage_deciles"]) == 4
    # the evaluation files are fingerprinted like inputs
    assert {Path(i.path).name for i in manifest.inputs if i.step == "decon"} == {"mt.jsonl", "plain.json"}
    rejected = [json.loads(line) for line in (out / "rejected" / "decon.jsonl").read_text().splitlines()]
    details = sorted(r["detail"] for r in rejected)
    assert any("of mt_bench" in d for d in details) and any("of plain" in d for d in details)
    codec = ArrowCodec(Sample)
    with pa.ipc.open_stream(str(out / "data-00000-of-00001.arrow")) as stream:
        kept = sorted(codec.from_row(row).lineage.source_id for row in stream.read_all().to_pylist())
    assert kept == ["clean", "half"]


def test_missing_eval_file_is_a_spec_error(tmp_path):
    spec = _write_spec(tmp_path, "evals/nope.jsonl")
    with pytest.raises(SpecError, match="matched no files"):
        run_spec(str(spec), str(tmp_path / "out"))
