"""Shared setup for the training tests: demo shards, a tiny tokenizer and model config, launches.

Everything is built locally (no downloads) once per test session under pytest's base temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def demo_shards(base: Path) -> Path:
    """Shards of ``pipelines/demo.yaml`` written by the real pipeline into ``base/train-demo``."""
    out = base / "train-demo"
    if not (out / "manifest.json").exists():
        from pipelines.run import run_spec

        run_spec(str(REPO / "pipelines" / "demo.yaml"), str(out))
    return out


def tiny_assets(base: Path) -> tuple[Path, Path]:
    """``(tokenizer_dir, model_config_json)`` trained/sized on the demo shards."""
    out = base / "train-tiny"
    tok_dir, config = out / "tokenizer", out / "model_config.json"
    if not config.exists():
        from train.tiny import build

        build([str(demo_shards(base))], str(out), vocab_size=512)
    return tok_dir, config


def zero3_config(base: Path) -> Path:
    """The shipped ZeRO-3 config with every parameter partitioned (the tiny model's tensors are all
    below the default persistence threshold, which would leave ZeRO-3 nothing to gather)."""
    path = base / "zero3_partition_all.json"
    config = json.loads((REPO / "train" / "configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path.write_text(json.dumps(config))
    return path


def launch(
    args: list[str], nprocs: int, log_path: Path, launcher: str = "deepspeed", timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``train/sft.py`` on ``nprocs`` CPU processes with ``launcher`` (``deepspeed`` or
    ``torchrun``). ``nprocs == 1`` runs the script directly (no launcher), which is also supported.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    script = str(REPO / "train" / "sft.py")
    if nprocs == 1:
        cmd = [sys.executable, script, *args]
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
    elif launcher == "torchrun":
        port = str(29500 + (os.getpid() % 1000))
        cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", str(nprocs), "--master_port", port, script, *args]
    else:
        port = str(29500 + (os.getpid() % 1000))
        cmd = [str(VENV_BIN / "deepspeed"), "--num_accelerators", str(nprocs), "--master_port", port, script, *args]
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-6000:]
        raise AssertionError(f"training failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def losses(out_dir: Path) -> dict[int, float]:
    from train.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(str(out_dir / "metrics.jsonl"))}


def records(out_dir: Path) -> list[dict[str, Any]]:
    from train.metrics import read_metrics

    return read_metrics(str(out_dir / "metrics.jsonl"))
