"""End to end: ``deepspeed --num_accelerators 2 train/sft.py`` on CPU (gloo) with a tiny Llama on the
demo pipeline's shards: loss falls, resume reproduces the uninterrupted curve, ZeRO-2 and ZeRO-3 save
loadable models, and splitting a step over ranks or over accumulation gives the same objective.
One interrupted run is launched with ``torchrun`` and resumed with the DeepSpeed launcher.

Nothing is compiled: the trainer skips DeepSpeed's CPU shared-memory op, and the CPU runs use
``torch.optim.AdamW`` (no CPU-Adam build).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from train_helpers import demo_shards, launch, losses, records, tiny_assets, zero3_config

pytestmark = pytest.mark.slow

STEPS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    tok_dir, config = tiny_assets(base)
    data = demo_shards(base)
    common = [
        "--data",
        str(data),
        "--model-config",
        str(config),
        "--tokenizer",
        str(tok_dir),
        "--max-seq-len",
        "512",
        "--lr",
        "3e-3",
        "--warmup-ratio",
        "0.1",
        "--seed",
        "1",
        "--precision",
        "fp32",
        "--pad-to-multiple-of",
        "8",
    ]
    return {"base": base, "common": common, "runs": {}, "data": data, "tok_dir": tok_dir}


def run_once(setup, name: str, extra: list[str], nprocs: int = 2, launcher: str = "deepspeed") -> Path:
    """Launch (once per module) and return the output dir."""
    if name not in setup["runs"]:
        out = setup["base"] / f"sft-{name}"
        launch([*setup["common"], "--output", str(out), *extra], nprocs, setup["base"] / f"sft-{name}.log", launcher)
        setup["runs"][name] = out
    return setup["runs"][name]


def zero2_full(setup) -> Path:
    return run_once(
        setup, "zero2", ["--deepspeed", "train/configs/zero2.json", "--max-steps", str(STEPS), "--save-steps", "4"]
    )


def loss_on_data(model_dir: Path | None, setup, template: str = "llama2", config: Path | None = None) -> float:
    """Mean supervised token loss of a saved model (or a fresh random init) on the demo shards."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.data import load_samples, tokenize_all
    from train.model import build_model, forward_token_losses
    from train.packing import collate
    from train.templates import load_template

    tokenizer = AutoTokenizer.from_pretrained(str(setup["tok_dir"]))
    samples, _ = tokenize_all(load_samples([str(setup["data"])]), tokenizer, load_template(template), 512)
    if model_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    else:
        torch.manual_seed(1)
        model = build_model(None, str(config), "sdpa", torch.float32, len(tokenizer))
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for s in samples:
            token_losses, batch = forward_token_losses(
                model, collate([[s]], tokenizer.pad_token_id), "sdpa", torch.float32, "cpu"
            )
            total += float(token_losses.sum())
            count += batch.n_supervised
    return total / count


def test_zero2_loss_falls_and_metrics_are_logged(setup):
    out = zero2_full(setup)
    recs = records(out)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    curve = [r["loss"] for r in recs]
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.3, curve
    for r in recs:
        assert r["tokens"] > 0 and r["padded_tokens"] >= r["tokens"] and r["tokens_per_s"] > 0
        assert r["supervised_tokens"] == sum(r["tokens_by_group"].values())
        weighted = sum(r["loss_by_group"][g] * r["tokens_by_group"][g] for g in r["loss_by_group"])
        assert weighted / r["supervised_tokens"] == pytest.approx(r["loss"], rel=1e-9)
    # The demo pipeline tags capabilities; the tags reach the metrics.
    groups = set().union(*(r["loss_by_group"] for r in recs))
    assert groups & {"reasoning", "retrieval", "understanding", "instruction_following", "general"}
    lrs = [r["lr"] for r in recs]
    assert max(lrs) == pytest.approx(3e-3) and lrs[-1] < lrs[3]
    # TensorBoard events carry the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tb = [e.value for e in events.Scalars("train/loss")]
    assert tb == pytest.approx(curve, rel=1e-6)
    assert any(tag.startswith("loss_by_group/") for tag in events.Tags()["scalars"])
    report = json.loads((out / "data_report.json").read_text())
    assert report["samples_kept"] > 0 and report["supervised_tokens"] > 0
    # The round-trip gate ran on every supervised turn of the demo and dropped nothing.
    assert report["round_trip"]["turns_checked"] > 0 and report["round_trip"]["failed_samples"] == 0
    assert "round_trip" not in report["dropped"]


def test_zero2_saves_a_loadable_trained_model(setup):
    out = zero2_full(setup)
    steps = {name for name in os.listdir(out / "checkpoints") if name.startswith("step")}
    assert steps == {"step4", "step8", "step12"}
    assert (out / "checkpoints" / "latest").read_text().strip() == "step12"
    _, config = tiny_assets(setup["base"])
    trained = loss_on_data(out, setup)
    initial = loss_on_data(None, setup, config=config)
    assert trained < initial - 0.3
    from transformers import AutoTokenizer

    from train.templates import load_template

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == load_template("llama2").source
    # Saved with the model: what parse_response and transformers serve read its turns with.
    assert tokenizer.response_template == load_template("llama2").response


def test_resume_reproduces_the_uninterrupted_run(setup):
    reference = losses(zero2_full(setup))
    args = ["--deepspeed", "train/configs/zero2.json", "--max-steps", str(STEPS), "--save-steps", "4"]
    # Interrupted under torchrun, resumed under the DeepSpeed launcher: the launchers are interchangeable.
    out = run_once(setup, "zero2-stopped", [*args, "--stop-after-steps", "6"], launcher="torchrun")
    first = losses(out)
    assert sorted(first) == list(range(1, 7))
    assert (out / "checkpoints" / "step6").is_dir() and not (out / "model.safetensors").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step6"
    # As if the run had crashed after logging step 7 but before its next checkpoint: that line goes.
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": 7, "loss": 99.0}) + "\n")
    # The same command plus --resume.
    launch(
        [*setup["common"], "--output", str(out), *args, "--stop-after-steps", "6", "--resume"],
        2,
        setup["base"] / "sft-resume.log",
    )
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step
    log = (setup["base"] / "sft-resume.log").read_text()
    assert "resumed from" in log and "at step 6" in log
    assert (out / "model.safetensors").exists()


def test_zero3_saves_a_loadable_model_with_its_chat_template(setup):
    out = run_once(
        setup,
        "zero3",
        [
            "--deepspeed",
            str(zero3_config(setup["base"])),
            "--max-steps",
            "4",
            "--chat-template",
            "agent_flan",
            "--max-seq-len",
            "160",
        ],
    )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from train.templates import load_template

    model = AutoModelForCausalLM.from_pretrained(str(out))
    _, config_path = tiny_assets(setup["base"])
    config = json.loads(config_path.read_text())
    assert model.get_input_embeddings().weight.shape == (config["vocab_size"], config["hidden_size"])
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == load_template("agent_flan").source
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<s><|Human|>\u0d46hi\n <|Assistant|>\u0d46"
    generation = GenerationConfig.from_pretrained(str(out))
    assert tokenizer.eos_token_id in (
        generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    )
    # Short sequences: samples whose supervised turns lie beyond 160 tokens are counted, not trained.
    report = json.loads((out / "data_report.json").read_text())
    assert report["dropped"].get("truncated_all_supervised", 0) > 0
    assert report["samples_kept"] + sum(report["dropped"].values()) == report["samples_in"]
    assert len(records(out)) == 4


@pytest.mark.parametrize(
    "split", [["--grad-accum", "2"], ["--micro-batch-size", "2"]], ids=["1rank-accum2", "1rank-micro2"]
)
def test_splitting_a_step_over_ranks_does_not_change_the_run(setup, split):
    """The reference run splits each step over 2 ranks x 1 row. One rank with 2 accumulated
    micro-batches, or with both rows in one micro-batch, sees the same rows with the same objective
    (sum of token losses / global supervised tokens), so the losses after updates are the same.
    A per-rank or per-micro-batch mean would weigh the rows differently and fail this."""
    reference = losses(zero2_full(setup))
    args = ["--deepspeed", "train/configs/zero2.json", "--max-steps", str(STEPS), "--stop-after-steps", "4", *split]
    single = losses(run_once(setup, "one-rank-" + "-".join(split).strip("-"), args, nprocs=1))
    assert sorted(single) == [1, 2, 3, 4]
    for step in single:
        assert single[step] == pytest.approx(reference[step], rel=1e-5), step


KILL_STEPS = 40


def test_sigkill_mid_run_then_resume_reproduces_the_uninterrupted_run(setup):
    """A real crash: the whole process group is SIGKILLed after the step-4 checkpoint, mid-run."""
    import signal
    import subprocess
    import sys
    import time

    args = ["--deepspeed", "train/configs/zero2.json", "--max-steps", str(KILL_STEPS), "--save-steps", "4"]
    reference = losses(run_once(setup, "zero2-long", args))
    out = setup["base"] / "sft-killed"
    port = str(29500 + (os.getpid() + 7) % 1000)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    command = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        "train/sft.py",
        *setup["common"],
        "--output",
        str(out),
        *args,
    ]
    log = open(setup["base"] / "sft-killed.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "step4").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()
    assert not (out / "model.safetensors").exists(), "the run finished before it could be killed"
    launch([*setup["common"], "--output", str(out), *args, "--resume"], 2, setup["base"] / "sft-killed-resume.log")
    resumed = losses(out)
    assert sorted(resumed) == list(range(1, KILL_STEPS + 1))
    for step in range(1, KILL_STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step
    assert (out / "model.safetensors").exists()
