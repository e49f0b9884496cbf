"""Training throughput benchmark: tokens per second and padding waste, with and without packing.

``python -m bench.train [--data DIR] [--device cpu|cuda] [--model-config JSON] [--tokenizer DIR]
[--max-seq-len N] [--micro-batch-size B] [--steps S] [--precision fp32|bf16] [--peak-tflops P]``

Tokenizes a pipeline output dir (default ``out/demo``) with the training code (``train.data``),
then for each mode runs ``--steps`` timed optimizer steps (forward, backward, AdamW) on one device,
in-process (no DeepSpeed), after ``--warmup`` untimed ones:

- ``packed``: best-fit packing into rows of ``--max-seq-len`` (block-diagonal mask, or varlen
  flash-attention with ``--attention flash_attention_2``);
- ``unpacked``: one sample per row, rows padded to the longest in the micro-batch.

Reported per mode: rows per epoch, the non-pad share of the tokens the model computed on in the
timed steps (varlen flash-attention computes on no padding at all), non-pad tokens per second
(the useful throughput), all tokens per second, mean step time, and with ``--peak-tflops`` (or on
CUDA) the model FLOPs utilisation::

    MFU = tokens_per_s * (6 * N + 12 * n_layers * d_model * T_eff) / peak_flops

``N`` = non-embedding parameters, ``T_eff`` = mean attended context per token: for block-diagonal
attention ``sum(len_i^2) / sum(len_i)`` over the samples (each sample attends only to itself), for
unpacked rows the same over samples (padding excluded). This is PaLM's accounting (attention as if
non-causal; halve the attention term for a causal-aware count). The GPU target configuration (1B
Llama, bf16, seq 4096, ZeRO-2, flash-attention) is documented in docs/training.md; no GPU figures
are claimed here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PEAK_TFLOPS = {"cuda": 989.0}  # H100 SXM dense bf16


def bench_config(vocab_size: int, hidden: int, layers: int) -> dict[str, Any]:
    from train.tiny import tiny_llama_config

    return tiny_llama_config(
        vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=8192,
    )


def non_embedding_params(model: Any) -> int:
    embed = {id(model.get_input_embeddings().weight)}
    out = model.get_output_embeddings()
    if out is not None:
        embed.add(id(out.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in embed)


def run_mode(args: argparse.Namespace, samples: list[Any], tokenizer: Any, config_path: str, packing: bool) -> dict:
    import torch

    from train.config import CosineSchedule
    from train.model import DTYPES, build_model, forward_token_losses
    from train.packing import DataPlan, collate

    dtype = DTYPES[args.precision]
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(None, config_path, args.attention, dtype, len(tokenizer), args.gradient_checkpointing)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    total_steps = args.warmup + args.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineSchedule.from_ratio(total_steps, 0.02))
    lengths = tuple(len(s) for s in samples)
    plan = DataPlan(lengths, args.max_seq_len, args.seed, packing, args.micro_batch_size, 1, 1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    rows = plan.bins(0)

    real = total = 0
    sq_sum = 0
    elapsed = 0.0
    n_params = non_embedding_params(model)
    for step in range(total_steps):
        (micro,) = plan.step_micro_batches(step, 0)
        batch = collate([[samples[i] for i in seq] for seq in micro], pad, args.pad_to_multiple_of)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses, used = forward_token_losses(model, batch, args.attention, dtype, device)
        loss = losses.sum() / max(1, batch.n_supervised)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            elapsed += dt
            real += batch.n_real
            total += used.n_total
            sq_sum += sum(lengths[i] ** 2 for seq in micro for i in seq)
    config = json.loads(Path(config_path).read_text())
    tokens_per_s = real / elapsed
    t_eff = sq_sum / max(1, real)
    flops_per_token = 6 * n_params + 12 * config["num_hidden_layers"] * config["hidden_size"] * t_eff
    peak = args.peak_tflops if args.peak_tflops is not None else DEFAULT_PEAK_TFLOPS.get(device.type)
    return {
        "mode": "packed" if packing else "unpacked",
        "rows_per_epoch": len(rows),
        "non_pad_share": real / total,
        "tokens_per_s": tokens_per_s,
        "all_tokens_per_s": total / elapsed,
        "step_s": elapsed / args.steps,
        "mfu": None if peak is None else tokens_per_s * flops_per_token / (peak * 1e12),
        "flops_per_token": flops_per_token,
        "params_non_embedding": n_params,
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def print_table(results: list[dict], args: argparse.Namespace, info: dict) -> None:
    print(
        f"\nbench.train: {info['samples']} samples from {args.data} ({info['tokens']} tokens, "
        f"{info['dropped']} dropped), template {args.chat_template}, device {args.device}, {args.precision}, "
        f"attention {args.attention}, {torch_threads()} CPU thread(s)"
    )
    print(
        f"model: {info['params'] / 1e6:.2f}M non-embedding params ({info['config']}), rows of <= "
        f"{args.max_seq_len} tokens, micro-batch {args.micro_batch_size} rows, {args.steps} timed steps "
        f"after {args.warmup} warm-up\n"
    )
    header = ["mode", "rows/epoch", "non-pad share", "tokens/s (non-pad)", "all tokens/s", "step (s)", "MFU"]
    lines = [header]
    for r in results:
        lines.append(
            [
                r["mode"],
                str(r["rows_per_epoch"]),
                f"{100 * r['non_pad_share']:.1f} %",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['all_tokens_per_s']:,.0f}",
                f"{r['step_s']:.3f}",
                "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %",
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for k, row in enumerate(lines):
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))
    if len(results) == 2:
        packed, unpacked = results
        print(
            f"\npacking: {packed['tokens_per_s'] / unpacked['tokens_per_s']:.2f}x non-pad tokens/s, "
            f"{unpacked['rows_per_epoch'] / packed['rows_per_epoch']:.2f}x fewer rows per epoch"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[str(REPO / "out" / "demo")], help="pipeline output dir(s)")
    parser.add_argument("--tokenizer", help="tokenizer dir (default: a byte-level BPE trained on --data)")
    parser.add_argument("--model-config", help="model config JSON (default: a small Llama, see --hidden/--layers)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chat-template", default="llama2")
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch-size", type=int, default=4, help="rows per step")
    parser.add_argument("--pad-to-multiple-of", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (CUDA default 989)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from train.data import load_samples, tokenize_all
    from train.templates import ensure_special_tokens, load_template
    from train.tiny import build

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tok_dir, config_path = args.tokenizer, args.model_config
        if tok_dir is None or config_path is None:
            built_tok, _ = build(args.data, tmp, vocab_size=2048)
            tok_dir = tok_dir or str(built_tok)
            if config_path is None:
                tokenizer = AutoTokenizer.from_pretrained(tok_dir)
                config_path = str(Path(tmp) / "bench_config.json")
                Path(config_path).write_text(json.dumps(bench_config(len(tokenizer), args.hidden, args.layers)))
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        template = load_template(args.chat_template, tokenizer)
        ensure_special_tokens(tokenizer, template)
        samples, report = tokenize_all(load_samples(args.data), tokenizer, template, args.max_seq_len)
        if not samples:
            print("no trainable samples", file=sys.stderr)
            return 1
        results = [run_mode(args, samples, tokenizer, str(config_path), packing) for packing in (True, False)]
        config = json.loads(Path(config_path).read_text())
        info = {
            "samples": len(samples),
            "tokens": sum(len(s) for s in samples),
            "dropped": sum(report.dropped.values()),
            "params": results[0]["params_non_embedding"],
            "config": f"hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, "
            f"vocab {config['vocab_size']}",
        }
    print_table(results, args, info)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=2))
    if not math.isfinite(results[0]["tokens_per_s"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
