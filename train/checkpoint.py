"""Checkpoints (resume) and the final Hugging Face model directory.

A checkpoint ``OUT/checkpoints/step{N}`` is DeepSpeed's (model, optimizer and LR-scheduler state,
partitioned as trained) plus ``client_state`` (the global step and what defines the data order:
seed, data fingerprint, sequences per step) plus each rank's RNG state. ``OUT/checkpoints/latest``
names the newest complete one. Resuming from step ``N`` continues with step ``N + 1`` on exactly the
sequences an uninterrupted run would use there (the data plan is a pure function of the step).

The export writes ``config.json``, ``model.safetensors``, ``generation_config.json`` and the
tokenizer with the training chat template (``chat_template.jinja`` / ``tokenizer_config.json``) into
``OUT``; under ZeRO-3 the partitioned weights are gathered layer by layer onto rank 0 first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_STEP_TAG = re.compile(r"^step(\d+)$")
#: What a training run writes into ``OUT``: its state (checkpoints, metrics, TensorBoard events,
#: reports) and the exported model's files. ``--overwrite-output`` removes these, nothing else.
RUN_DIRS = (CHECKPOINT_DIR, "tensorboard")
RUN_FILES = (
    "metrics.jsonl",
    "data_report.json",
    "train_config.json",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)
_RUN_SHARDS = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")


def output_dir_problem(out_dir: str, resume: str | None, overwrite: bool) -> str | None:
    """Why training into ``out_dir`` must not start, or ``None``: a non-empty output is another
    run's, and training into it without ``--resume`` would mix the two (metrics, TensorBoard
    events, old checkpoints beside new ones), so it needs ``--resume`` or ``--overwrite-output``."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        return f"--output {out_dir!r} is not a directory"
    if resume or overwrite or not os.path.isdir(out_dir):
        return None
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return None
    named = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    return (
        f"--output {out_dir!r} is not empty ({named}); training into it would mix two runs: pass --resume to "
        "continue the run there, --overwrite-output to start over (its checkpoints, metrics and model files are "
        "removed), or choose another --output"
    )


def clear_run_files(out_dir: str) -> list[str]:
    """Remove what an earlier training run wrote into ``out_dir`` (:data:`RUN_DIRS`,
    :data:`RUN_FILES`, sharded model files); other files stay. Returns the names removed."""
    removed = []
    if not os.path.isdir(out_dir):
        return removed
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name in RUN_DIRS and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)  # every rank clears; another may be first
        elif name in RUN_FILES or _RUN_SHARDS.match(name):
            with contextlib.suppress(FileNotFoundError):  # another rank was first
                os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def data_fingerprint(sample_ids: list[str], lengths: list[int]) -> str:
    """Hash of the tokenized training set (ids and token lengths, in order)."""
    digest = hashlib.sha256()
    for sid, n in zip(sample_ids, lengths, strict=True):
        digest.update(f"{sid}:{n};".encode())
    return digest.hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine: Any, out_dir: str, step: int, client_state: dict[str, Any], keep: int = 0) -> str:
    """Save step ``step`` (collective: every rank calls it). Returns the checkpoint path."""
    root = os.path.join(out_dir, CHECKPOINT_DIR)
    tag = f"step{step}"
    engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(rng_state(), os.path.join(root, tag, f"rng_state_rank{rank}.pt"))
    _barrier()
    if rank == 0:
        # `latest` is written last, so it only ever names a complete checkpoint.
        tmp = os.path.join(root, "latest.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(tag)
        os.replace(tmp, os.path.join(root, "latest"))
        if keep > 0:
            for old in list_checkpoints(out_dir)[:-keep]:
                shutil.rmtree(os.path.join(root, f"step{old}"), ignore_errors=True)
    _barrier()
    return os.path.join(root, tag)


def list_checkpoints(out_dir: str) -> list[int]:
    """Steps of the checkpoints under ``OUT/checkpoints``, ascending."""
    root = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    steps = [int(m.group(1)) for name in os.listdir(root) if (m := _STEP_TAG.match(name))]
    return sorted(steps)


def resolve_resume(resume: str, out_dir: str) -> tuple[str, str] | None:
    """``(load_dir, tag)`` for ``--resume``: ``auto`` = ``OUT/checkpoints/latest`` (None if absent)."""
    if resume == "auto":
        latest = os.path.join(out_dir, CHECKPOINT_DIR, "latest")
        if not os.path.isfile(latest):
            return None
        with open(latest, encoding="utf-8") as handle:
            tag = handle.read().strip()
        return os.path.join(out_dir, CHECKPOINT_DIR), tag
    path = os.path.abspath(resume.rstrip("/"))
    if os.path.isfile(os.path.join(path, "latest")):  # a checkpoints/ root
        with open(os.path.join(path, "latest"), encoding="utf-8") as handle:
            return path, handle.read().strip()
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return os.path.dirname(path), os.path.basename(path)


def load_checkpoint(engine: Any, load_dir: str, tag: str) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; return the client state."""
    path, client_state = engine.load_checkpoint(load_dir, tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {load_dir}/{tag}")
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = os.path.join(load_dir, tag, f"rng_state_rank{rank}.pt")
    if os.path.exists(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state or {}


def export_hf_model(
    engine: Any, out_dir: str, tokenizer: Any, chat_template: str, generation: dict[str, Any], zero_stage: int
) -> None:
    """Write a loadable Hugging Face model directory to ``out_dir`` (collective call)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    model = engine.module
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        if state_dict is None:
            model.save_pretrained(out_dir, safe_serialization=True)
        else:
            model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(out_dir)
        from transformers import GenerationConfig

        GenerationConfig(**generation).save_pretrained(out_dir)
        log.info("saved Hugging Face model to %s", out_dir)
    _barrier()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
