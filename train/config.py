"""Command line, DeepSpeed config resolution and the learning-rate schedule of ``train/sft.py``.

Defaults follow the AgentTuning recipe (METHOD.md): lr 5e-5, cosine with 2 % warmup, AdamW
(0.9, 0.95), weight decay 0.1, clip 1.0, sequence length 4096, the Llama-2 chat template.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train/sft.py",
        description="Supervised fine-tuning on agentmill shards with DeepSpeed (see docs/training.md).",
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", nargs="+", required=True, help="pipeline output dirs (Arrow shards)")
    data.add_argument(
        "--chat-template", default="llama2", help="llama2 | agent_flan | chatml | llama3 | tokenizer | FILE"
    )
    data.add_argument("--system-prompt", default=None, help="system message for samples without one")
    data.add_argument(
        "--tools",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="render sample tools and structured calls natively where the template supports them",
    )
    data.add_argument("--pass-tools", action="store_true", help=argparse.SUPPRESS)  # deprecated: tools are default
    data.add_argument(
        "--round-trip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="drop samples whose supervised turns do not parse back with the template's response template",
    )
    data.add_argument("--response-template", default=None, help="response template JSON (default: the template's)")
    data.add_argument(
        "--strict", action="store_true", help="fail if a sample fails the round trip or the round trip cannot run"
    )
    data.add_argument("--max-seq-len", type=int, default=4096)
    data.add_argument("--packing", action=argparse.BooleanOptionalAction, default=True, help="best-fit packing")
    data.add_argument("--pad-to-multiple-of", type=int, default=8)

    model = p.add_argument_group("model")
    model.add_argument("--model", default=None, help="HF model name or path (weights loaded)")
    model.add_argument("--model-config", default=None, help="config JSON: random-init model (tests/benchmarks)")
    model.add_argument("--tokenizer", default=None, help="tokenizer name or path (default: --model)")
    model.add_argument("--attention", default="auto", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    model.add_argument("--gradient-checkpointing", action="store_true")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--deepspeed", default=str(CONFIG_DIR / "zero2.json"), help="DeepSpeed config JSON")
    opt.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    opt.add_argument("--optimizer", default="auto", choices=["auto", "torch", "deepspeed"])
    opt.add_argument("--micro-batch-size", type=int, default=1, help="sequences per micro-batch per rank")
    opt.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    opt.add_argument("--global-batch-size", type=int, default=None, help="sequences per step; sets --grad-accum")
    opt.add_argument("--epochs", type=float, default=1.0)
    opt.add_argument("--max-steps", type=int, default=None, help="total optimizer steps (overrides --epochs)")
    opt.add_argument("--lr", type=float, default=5e-5)
    opt.add_argument("--min-lr-ratio", type=float, default=0.0)
    opt.add_argument("--warmup-ratio", type=float, default=0.02)
    opt.add_argument("--weight-decay", type=float, default=0.1)
    opt.add_argument("--adam-beta1", type=float, default=0.9)
    opt.add_argument("--adam-beta2", type=float, default=0.95)
    opt.add_argument("--adam-eps", type=float, default=1e-8)
    opt.add_argument("--clip", type=float, default=1.0)
    opt.add_argument("--seed", type=int, default=0)

    run = p.add_argument_group("run")
    run.add_argument("--output", required=True, help="output dir: HF model, checkpoints/, metrics.jsonl")
    run.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    run.add_argument("--keep-checkpoints", type=int, default=0, help="keep the newest K checkpoints (0: all)")
    run.add_argument("--resume", nargs="?", const="auto", default=None, help="'auto' (latest in OUT) or a dir")
    run.add_argument(
        "--overwrite-output",
        action="store_true",
        help="start over in a non-empty OUT: remove an earlier run's checkpoints, metrics and model files first",
    )
    run.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="checkpoint and exit after this step (a planned interruption)",
    )
    run.add_argument("--log-steps", type=int, default=1)
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    run.add_argument("--export", action=argparse.BooleanOptionalAction, default=True, help="save the HF model")
    run.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def validate_args(args: argparse.Namespace) -> None:
    """Refuse inconsistent arguments, and an ``--output`` that holds another run unless
    ``--resume`` (continue it) or ``--overwrite-output`` (whose earlier run files are removed
    here, on every rank, before any rank writes)."""
    if args.model is None and args.model_config is None:
        raise SystemExit("one of --model or --model-config is required")
    if args.model_config is not None and args.tokenizer is None and args.model is None:
        raise SystemExit("--model-config needs --tokenizer (or --model for the tokenizer)")
    if args.grad_accum is not None and args.global_batch_size is not None:
        raise SystemExit("give --grad-accum or --global-batch-size, not both")
    if args.max_seq_len < 2:
        raise SystemExit("--max-seq-len must be at least 2")
    if args.strict and not args.round_trip:
        raise SystemExit("--strict checks the round trip: drop --no-round-trip")
    from train.checkpoint import clear_run_files, output_dir_problem

    problem = output_dir_problem(args.output, args.resume, args.overwrite_output)
    if problem is not None:
        build_parser().error(problem)  # exit 2, before anything is loaded or written
    if args.overwrite_output and args.resume:
        build_parser().error("--overwrite-output starts over; --resume continues: give one of them")
    if args.overwrite_output:
        clear_run_files(args.output)  # each rank, before any rank writes (they meet at init first)


def grad_accum_steps(args: argparse.Namespace, world_size: int) -> int:
    """Gradient accumulation: ``--grad-accum``, or ``--global-batch-size / (micro x world)``."""
    if args.global_batch_size is None:
        return args.grad_accum or 1
    per_step = args.micro_batch_size * world_size
    if args.global_batch_size % per_step:
        raise SystemExit(
            f"--global-batch-size {args.global_batch_size} is not a multiple of micro x world = {per_step}"
        )
    return args.global_batch_size // per_step


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto``: bf16 on a GPU that supports it, fp32 otherwise (CPU)."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16"
    return "fp32"


def _fill_auto(node: Any, values: dict[str, Any], path: str = "") -> Any:
    if isinstance(node, dict):
        return {k: _fill_auto(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path not in values:
            raise ValueError(f"DeepSpeed config: no value for 'auto' at {path}")
        return values[path]
    return node


def deepspeed_config(
    path: str, *, micro: int, accum: int, world_size: int, precision: str, clip: float, optimizer: dict | None
) -> dict[str, Any]:
    """Load a DeepSpeed JSON config and fill in what the command line decides.

    Batch sizes, clipping and precision always come from the command line (``auto`` placeholders
    or not); ZeRO-3 always gathers 16-bit weights on save so the final model is complete;
    ``optimizer`` (a DeepSpeed optimizer section) is set when DeepSpeed builds the optimizer.
    """
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    values = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": clip,
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
    }
    config = _fill_auto(copy.deepcopy(raw), values)
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = accum
    config["train_batch_size"] = micro * accum * world_size
    config["gradient_clipping"] = clip
    config.setdefault("bf16", {})["enabled"] = precision == "bf16"
    config.setdefault("fp16", {})["enabled"] = precision == "fp16"
    config.setdefault("steps_per_print", 1 << 30)
    config["zero_allow_untested_optimizer"] = True
    zero = config.setdefault("zero_optimization", {"stage": 0})
    if zero.get("stage", 0) == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config.pop("scheduler", None)  # the schedule is ours (saved in checkpoints with the engine)
    if optimizer is not None:
        config["optimizer"] = optimizer
    else:
        config.pop("optimizer", None)
    return config


def offloads_optimizer(config: dict[str, Any]) -> bool:
    zero = config.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


@dataclass(frozen=True)
class CosineSchedule:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio``.

    Step ``s`` (0-based, the s-th optimizer update) gets ``(s + 1) / warmup`` while ``s < warmup``,
    so the first update already moves the weights.
    """

    total: int
    warmup: int
    min_ratio: float = 0.0

    @classmethod
    def from_ratio(cls, total: int, warmup_ratio: float, min_ratio: float = 0.0) -> CosineSchedule:
        return cls(total, math.ceil(warmup_ratio * total), min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
