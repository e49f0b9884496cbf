"""score: RunInference with a tiny, randomly initialised local sequence classifier."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipelines.errors import SpecError
from pipelines.run import run_spec
from schemas import Role, Sample, Trajectory, Turn, trajectory_id
from schemas.arrow import ArrowCodec
from transforms.beam.score import TrajectoryScorer
from transforms.score import ScoreConfig, apply_score, label_index, render, score_logits


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT classifier (hidden size 32) with a byte-level tokenizer, built offline.

    The body is random; the head is set along the main direction in which the pooled outputs of
    the test trajectories vary, so that their scores spread over [0, 1] instead of all sitting
    at one value.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, ByT5Tokenizer

    directory = tmp_path_factory.mktemp("tiny_reward_model")
    tokenizer = ByT5Tokenizer()
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "bad", 1: "good"},
        label2id={"bad": 0, "good": 1},
    )
    model = AutoModelForSequenceClassification.from_config(config).eval()
    texts = [render(make(i), list(Role)) for i in range(40)]
    with torch.no_grad():
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        pooled = model.bert(**encoded).pooler_output
        centre = pooled.mean(dim=0)
        direction = torch.linalg.svd(pooled - centre, full_matrices=False).Vh[0]
        spread = ((pooled - centre) @ direction).std()
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[1] = direction * (2.0 / spread)
        model.classifier.bias[1] = -(centre @ direction) * (2.0 / spread)
    model.save_pretrained(directory)
    return directory


def make(i: int, reward: float | None = None) -> Trajectory:
    turns = [
        Turn(role=Role.SYSTEM, text="You are an agent."),
        Turn(role=Role.USER, text=f"Task {i}: find item number {i * 7919 % 1000}."),
        Turn(role=Role.ASSISTANT, text=f"Thought: step {i}.\nAction: search[{'x' * (i % 13)}]", loss=True),
    ]
    return Trajectory(
        id=trajectory_id("t", str(i), turns), source="t", source_id=str(i), task="webshop", turns=turns, reward=reward
    )


def test_render_roles_and_order():
    trajectory = make(1)
    assert render(trajectory, list(Role)).splitlines()[0] == "system: You are an agent."
    assert render(trajectory, [Role.ASSISTANT]).startswith("assistant: Thought: step 1.")


def test_label_index():
    config = SimpleNamespace(num_labels=3, label2id={"bad": 0, "ok": 1, "good": 2})
    assert label_index(config, None) == 2
    assert label_index(config, "ok") == 1
    assert label_index(config, 0) == 0
    with pytest.raises(ValueError):
        label_index(config, "great")
    with pytest.raises(ValueError):
        label_index(config, 3)


def test_score_logits():
    import torch

    logits = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert score_logits(logits, 1, "probability", 6) == [0.5, round(1 / (1 + pow(2.718281828459045, -2)), 6)]
    assert score_logits(logits, 1, "logit", 6) == [0.0, 2.0]
    assert score_logits(torch.tensor([[0.0], [100.0]]), 0, "probability", 3) == [0.5, 1.0]


def test_apply_score_fields_and_overwrite():
    trajectory = make(1, reward=0.3)
    scored, written = apply_score(trajectory, 0.9, ScoreConfig(model="m"))
    assert written and scored.reward == 0.9
    kept, written = apply_score(trajectory, 0.9, ScoreConfig(model="m", overwrite=False))
    assert not written and kept.reward == 0.3
    meta, _ = apply_score(trajectory, 0.9, ScoreConfig(model="m", field="metadata.rm"))
    assert meta.metadata["rm"] == 0.9 and meta.reward == 0.3
    with pytest.raises(ValueError):
        apply_score(trajectory, float("nan"), ScoreConfig(model="m"))


def test_config_validation():
    with pytest.raises(ValidationError):
        ScoreConfig(model="m", field="score")
    with pytest.raises(ValidationError):
        ScoreConfig(model="m", batchsize=4)
    with pytest.raises(ValidationError):
        ScoreConfig()


def test_exact_scores_do_not_depend_on_batching(tiny_model):
    handler = TrajectoryScorer(str(tiny_model), ScoreConfig(model=str(tiny_model)))
    loaded = handler.load_model()
    batch = [make(i) for i in range(12)]
    together = [r.inference for r in handler.run_inference(batch, loaded)]
    alone = [next(iter(handler.run_inference([t], loaded))).inference for t in batch]
    assert together == alone
    assert len(set(together)) > 6 and min(together) < 0.5 < max(together)  # the scores really differ
    assert all(r.example is t for r, t in zip(handler.run_inference(batch, loaded), batch, strict=True))
    padded = TrajectoryScorer(str(tiny_model), ScoreConfig(model=str(tiny_model), exact=False))
    batched = [r.inference for r in padded.run_inference(batch, padded.load_model())]
    assert batched == pytest.approx(together, abs=1e-4)
    # label by name and raw logits
    bad = TrajectoryScorer(str(tiny_model), ScoreConfig(model=str(tiny_model), label="bad"))
    assert [r.inference for r in bad.run_inference(batch, bad.load_model())] == pytest.approx(
        [1 - s for s in together], abs=2e-6
    )


def _spec(tmp_path: Path, model: str, trajectories: list[Trajectory], score: dict | None = None) -> Path:
    records = []
    for t in trajectories:
        record = {"id": t.source_id, "messages": [{"role": turn.role.value, "content": turn.text} for turn in t.turns]}
        if t.reward is not None:
            record["reward"] = t.reward
        records.append(record)
    (tmp_path / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    steps = [
        {
            "id": "read",
            "type": "read",
            "config": {"format": "openai", "source": "t", "task": "webshop", "paths": "trajectories.jsonl"},
        },
        {
            "id": "score",
            "type": "score",
            "inputs": ["read"],
            "config": {"model": model, "batch_size": 4, **(score or {})},
        },
        {
            "id": "filter",
            "type": "reward_filter",
            "inputs": ["score"],
            "config": {"default_threshold": 0.5, "thresholds": {"webshop": 0.5}, "checks": ["reward"]},
        },
        {"id": "chat", "type": "to_chat", "inputs": ["filter"]},
        {"id": "write", "type": "write", "inputs": ["chat"]},
    ]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "score", "steps": steps, "audit": {"enabled": False}}))  # mechanics only
    return spec


def _samples(out: Path) -> list[Sample]:
    codec = ArrowCodec(Sample)
    with pa.ipc.open_stream(str(out / "data-00000-of-00001.arrow")) as stream:
        return [codec.from_row(row) for row in stream.read_all().to_pylist()]


def test_pipeline_scores_then_filters(tiny_model, tmp_path):
    import shutil

    shutil.copytree(tiny_model, tmp_path / "rm")  # a model directory relative to the spec
    trajectories = [make(i) for i in range(20)]
    # what the model says, computed directly (the reader builds the same turns, minus the system prompt's loss)
    handler = TrajectoryScorer(str(tiny_model), ScoreConfig(model=str(tiny_model)))
    loaded = handler.load_model()
    expected = {
        t.source_id: r.inference for t, r in zip(trajectories, handler.run_inference(trajectories, loaded), strict=True)
    }
    out = tmp_path / "out"
    manifest = run_spec(str(_spec(tmp_path, "rm", trajectories)), str(out)).manifest
    score = manifest.steps["score"]
    assert score.in_ == score.passed == score.emitted == 20 and not score.dead_letter
    assert manifest.ratios["score"]["scored"] == 20 and sum(manifest.ratios["score"]["score_deciles"]) == 20
    kept = {s.lineage.source_id: s.metadata["reward"] for s in _samples(out)}
    assert kept == {sid: value for sid, value in expected.items() if value >= 0.5}
    assert 0 < len(kept) < 20
    assert manifest.steps["filter"].filtered == {"below_threshold": 20 - len(kept)}


def test_pipeline_keeps_existing_rewards_when_asked(tiny_model, tmp_path):
    trajectories = [make(i, reward=1.0 if i % 2 else None) for i in range(10)]
    out = tmp_path / "out"
    manifest = run_spec(str(_spec(tmp_path, str(tiny_model), trajectories, {"overwrite": False})), str(out)).manifest
    assert manifest.ratios["score"]["kept_existing"] == 5 and manifest.ratios["score"]["scored"] == 5
    rewards = {s.lineage.source_id: s.metadata["reward"] for s in _samples(out)}
    assert all(rewards[str(i)] == 1.0 for i in range(1, 10, 2))


def test_missing_model_directory_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="not a model directory"):
        run_spec(str(_spec(tmp_path, "no_such_model", [make(1)])), str(tmp_path / "out"))
