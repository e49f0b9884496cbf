"""train/sft.py against TRL's SFTTrainer on the same shards, model, tokenizer, template and sequence length.

``python -m bench.train_vs_trl [--data DIR ...] [--max-seq-len N] [--micro-batch-size B] [--steps S]
[--warmup W] [--hidden H] [--layers L] [--threads T] [--trl-input tokens|export] [--repeats R]
[--json PATH]``

Both trainers run on CPU, each in a fresh process, once packed and once unpacked:

- **agentmill**: ``train/sft.py`` itself (DeepSpeed ZeRO-2 engine, one process, no launcher) on
  the shards, template ``chatml``; throughput from its ``metrics.jsonl`` (``tokens`` and
  ``step_time_s`` per step). Packed: best-fit packing into rows of ``--max-seq-len`` with a
  block-diagonal mask; unpacked: one sample per row, padded to the longest in the micro-batch.
- **TRL**: ``SFTTrainer`` on the same shards, the same tokenizer and model config.
  ``--trl-input tokens`` (default): TRL gets ``train/sft.py``'s own ``input_ids`` and ``labels``
  (``train.data.tokenize_all`` with the trainer's arguments, round trip included), so both
  trainers do the same work on the same tokens and only the training loops differ.
  ``--trl-input export``: TRL renders and masks ``agentmill export --to openai --arguments object
  --loss-key train`` itself (``assistant_only_loss=True``, ``templates/trl/chatml_training.jinja``;
  the "data tokens" column shows whether it got the same tokens). Packed: TRL's default ``bfd``
  packing, which is padding-free (the micro-batch's rows are one flattened row; transformers
  derives the per-sample causal mask from the restarting position ids); unpacked: padded rows.
  Throughput from a callback that times each optimizer step and counts its non-pad tokens.

Same for both: the random-init Llama config (``--hidden``, ``--layers``), fp32, SDPA attention,
``--micro-batch-size`` rows per step, AdamW (lr 1e-4, betas 0.9/0.95, weight decay 0.1, clip
1.0), seed 0, ``--threads`` torch threads. The first ``--warmup`` steps are not timed. With
``--repeats R`` every configuration runs R times (the two trainers back to back per mode, so they
see a similar load on a shared machine) and the fastest run of each is reported.

Reported per trainer and mode: rows of the first epoch, non-pad tokens of the timed steps, non-pad
tokens per second, mean step time, and the process's peak resident memory (``ru_maxrss`` of the
child from ``wait4``: the whole process, imports and data preparation included); then the ratios
agentmill / TRL. Tokens per row differ between the modes, so compare tokens per second, not steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRL_TEMPLATE = REPO / "templates" / "trl" / "chatml_training.jinja"
LR, BETAS, WEIGHT_DECAY, CLIP, SEED = 1e-4, (0.9, 0.95), 0.1, 1.0, 0
INPUTS = ("tokens", "export")


def child_env(threads: int) -> dict[str, str]:
    """The environment of a trainer process: ``threads`` CPU threads, no distributed variables."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_child(command: list[str], log_path: Path, threads: int) -> tuple[float, int]:
    """Run ``command``; return ``(seconds, peak RSS in bytes)`` of that process (``wait4``).

    Raises ``RuntimeError`` with the log's tail when it fails."""
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=child_env(threads), stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({proc.returncode}):\n{tail}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports kilobytes


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Shards (the given ones, or the demo pipeline's), the tokenizer (chatml tokens, the TRL
    template as its chat template), the model config and the export."""
    from transformers import AutoTokenizer

    from bench.train import bench_config
    from train.templates import ensure_special_tokens, load_template
    from train.tiny import build

    data = [str(Path(d).resolve()) for d in args.data] if args.data else []
    if not data:
        from pipelines.run import run_spec

        demo = work / "demo"
        run_spec(str(REPO / "pipelines" / "demo.yaml"), str(demo))
        data = [str(demo)]
    built, _ = build(data, str(work / "tiny"), vocab_size=args.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(str(built))
    ensure_special_tokens(tokenizer, load_template("chatml"))
    tokenizer.chat_template = TRL_TEMPLATE.read_text(encoding="utf-8")
    tok_dir = work / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    config = work / "model_config.json"
    config.write_text(json.dumps(bench_config(len(tokenizer), args.hidden, args.layers)), encoding="utf-8")
    export = work / "export.jsonl"
    with open(export, "w", encoding="utf-8") as merged:
        for i, directory in enumerate(data):
            part = work / f"export-{i}.jsonl"
            command = [sys.executable, "-m", "pipelines.cli", "export", directory, "--to", "openai"]
            command += ["--output", str(part), "--arguments", "object", "--loss-key", "train"]
            subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
            merged.write(part.read_text(encoding="utf-8"))
    return {"data": data, "tokenizer": str(tok_dir), "config": str(config), "export": str(export)}


def agentmill_command(args: argparse.Namespace, setup: dict[str, Any], packing: bool, out: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train" / "sft.py"),
        "--data",
        *setup["data"],
        "--tokenizer",
        setup["tokenizer"],
        "--model-config",
        setup["config"],
        "--chat-template",
        "chatml",
        "--max-seq-len",
        str(args.max_seq_len),
        "--packing" if packing else "--no-packing",
        "--micro-batch-size",
        str(args.micro_batch_size),
        "--max-steps",
        str(args.warmup + args.steps),
        "--precision",
        "fp32",
        "--attention",
        "sdpa",
        "--lr",
        str(LR),
        "--adam-beta1",
        str(BETAS[0]),
        "--adam-beta2",
        str(BETAS[1]),
        "--weight-decay",
        str(WEIGHT_DECAY),
        "--clip",
        str(CLIP),
        "--seed",
        str(SEED),
        "--output",
        str(out),
        "--no-tensorboard",
        "--no-export",
    ]


def agentmill_result(out: Path, log: Path, warmup: int) -> dict[str, Any]:
    """Timed figures from ``metrics.jsonl`` and ``data_report.json`` of a ``train/sft.py`` run
    (rows per epoch from its log)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    timed = [r for r in records if r["step"] > warmup]
    report = json.loads((out / "data_report.json").read_text(encoding="utf-8"))
    rows = re.search(r"(\d+) sequences/epoch", log.read_text(encoding="utf-8", errors="replace"))
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["step_time_s"] for r in timed)
    return {
        "samples": report["samples_kept"],
        "data_tokens": report["tokens"],
        "rows_per_epoch": int(rows.group(1)) if rows else None,
        "timed_steps": len(timed),
        "tokens": tokens,
        "all_tokens": sum(r["padded_tokens"] for r in timed),
        "seconds": seconds,
    }


def trl_child(argv: list[str]) -> int:
    """The TRL side, run in its own process: train, then write the timed figures as JSON."""
    parser = argparse.ArgumentParser()
    for name in ("--export", "--tokenizer", "--model-config", "--output", "--result"):
        parser.add_argument(name, required=True)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--input", choices=INPUTS, required=True)
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, required=True)
    for name in ("--max-seq-len", "--micro-batch-size", "--steps", "--warmup"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args(argv)

    import datasets
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    raw = json.loads(Path(args.model_config).read_text(encoding="utf-8"))
    raw.pop("model_type")
    raw.pop("architectures", None)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(**raw, use_cache=False))
    model.config._attn_implementation = "sdpa"
    if args.input == "tokens":  # train/sft.py's own tokens and labels (its tokenize_all, same arguments)
        from train.data import load_samples, tokenize_all
        from train.templates import load_template

        tokenized, _ = tokenize_all(
            load_samples(args.data), tokenizer, load_template("chatml"), args.max_seq_len, check_round_trip=True
        )
        dataset = datasets.Dataset.from_dict(
            {"input_ids": [t.input_ids for t in tokenized], "labels": [t.labels for t in tokenized]}
        )
    else:  # TRL renders and masks the export itself (assistant_only_loss with the TRL template)
        dataset = datasets.load_dataset("json", data_files=args.export, split="train", cache_dir=f"{args.output}/hf")
    pad = tokenizer.pad_token_id
    timing: dict[str, Any] = {"steps": []}

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            timing["t0"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            timing["steps"].append((time.perf_counter() - timing["t0"], timing.pop("real", 0), timing.pop("all", 0)))

    class CountingTrainer(SFTTrainer):
        def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kwargs: Any) -> Any:
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            timing["real"] = timing.get("real", 0) + int(mask.sum() if mask is not None else (ids != pad).sum())
            timing["all"] = timing.get("all", 0) + ids.numel()
            return super().training_step(model, inputs, *rest, **kwargs)

    config = SFTConfig(
        output_dir=args.output,
        assistant_only_loss=args.input == "export",
        max_length=args.max_seq_len,
        packing=args.packing,
        per_device_train_batch_size=args.micro_batch_size,
        pad_to_multiple_of=8,
        max_steps=args.warmup + args.steps,
        learning_rate=LR,
        adam_beta1=BETAS[0],
        adam_beta2=BETAS[1],
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=CLIP,
        optim="adamw_torch",
        lr_scheduler_type="cosine",
        warmup_steps=0.02,  # a float below 1 is a ratio of the steps (train/sft.py --warmup-ratio 0.02)
        seed=SEED,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[StepClock()]
    )
    prepared = trainer.train_dataset
    trainer.train()
    timed = timing["steps"][args.warmup :]
    result = {
        "samples": len(dataset),
        "data_tokens": sum(len(ids) for ids in (dataset if args.input == "tokens" else prepared)["input_ids"])
        if args.input == "tokens" or not args.packing
        else None,
        "rows_per_epoch": len(prepared),
        "timed_steps": len(timed),
        "tokens": sum(real for _, real, _ in timed),
        "all_tokens": sum(total for *_, total in timed),
        "seconds": sum(seconds for seconds, *_ in timed),
    }
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0


def trl_command(args: argparse.Namespace, setup: dict[str, Any], packing: bool, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.train_vs_trl",
        "--trl-child",
        "--export",
        setup["export"],
        "--data",
        *setup["data"],
        "--input",
        args.trl_input,
        "--tokenizer",
        setup["tokenizer"],
        "--model-config",
        setup["config"],
        "--output",
        str(out),
        "--result",
        str(out / "result.json"),
        "--packing" if packing else "--no-packing",
        "--max-seq-len",
        str(args.max_seq_len),
        "--micro-batch-size",
        str(args.micro_batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]


def print_table(results: list[dict[str, Any]], args: argparse.Namespace, setup: dict[str, Any]) -> None:
    config = json.loads(Path(setup["config"]).read_text(encoding="utf-8"))
    print(
        f"\nbench.train_vs_trl: {', '.join(setup['data'])}; template chatml; TRL input: {args.trl_input}; "
        "CPU, fp32, SDPA, "
        f"{args.threads} torch thread(s); Llama hidden {config['hidden_size']}, {config['num_hidden_layers']} "
        f"layers, vocab {config['vocab_size']}; rows of <= {args.max_seq_len} tokens, {args.micro_batch_size} "
        f"rows per step, {args.steps} timed steps after {args.warmup} warm-up; best of {args.repeats} run(s)\n"
    )
    header = ["trainer", "mode", "samples", "data tokens", "rows/epoch", "timed tokens", "tokens/s", "step (s)"]
    header.append("peak RSS (MiB)")
    lines = [header]
    for r in results:
        lines.append(
            [
                r["trainer"],
                r["mode"],
                str(r["samples"]),
                "-" if r["data_tokens"] is None else f"{r['data_tokens']:,}",
                str(r["rows_per_epoch"] if r["rows_per_epoch"] is not None else "-"),
                f"{r['tokens']:,}",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['step_s']:.3f}",
                f"{r['peak_rss'] / 2**20:,.0f}",
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    for k, row in enumerate(lines):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print()
    by = {(r["trainer"], r["mode"]): r for r in results}
    for mode in ("packed", "unpacked"):
        ours, theirs = by[("agentmill", mode)], by[("trl", mode)]
        print(
            f"{mode}: agentmill / TRL = {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x non-pad tokens/s, "
            f"{ours['peak_rss'] / theirs['peak_rss']:.2f}x peak RSS"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--trl-child"]:
        return trl_child(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.train_vs_trl", description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=None, help="pipeline output dir(s) (default: the demo's)")
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch-size", type=int, default=4, help="rows per optimizer step")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per trainer (1: steady when shared)")
    parser.add_argument(
        "--trl-input",
        choices=INPUTS,
        default="tokens",
        help="tokens: TRL trains on train/sft.py's tokens and labels (identical work); export: TRL renders "
        "and masks `agentmill export --to openai` itself",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration; the fastest is reported")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, exports)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-train-vs-trl-"))
    try:
        setup = prepare(args, work)
        runners = {
            "agentmill": (agentmill_command, lambda out: agentmill_result(out, out.with_suffix(".log"), args.warmup)),
            "trl": (trl_command, lambda out: json.loads((out / "result.json").read_text(encoding="utf-8"))),
        }
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for packing in (True, False):  # the two trainers back to back, so they see a similar machine load
                mode = "packed" if packing else "unpacked"
                for trainer, (command, read) in runners.items():
                    out = work / f"{trainer}-{mode}-{repeat}"
                    out.mkdir()
                    seconds, peak = run_child(command(args, setup, packing, out), out.with_suffix(".log"), args.threads)
                    figures = read(out)
                    figures.update(
                        trainer=trainer,
                        mode=mode,
                        repeat=repeat,
                        peak_rss=peak,
                        process_s=seconds,
                        tokens_per_s=figures["tokens"] / figures["seconds"],
                        step_s=figures["seconds"] / max(1, figures["timed_steps"]),
                    )
                    runs.setdefault((trainer, mode), []).append(figures)
                    print(
                        f"run {repeat + 1}/{args.repeats} {trainer} {mode}: {figures['tokens_per_s']:,.0f} tokens/s, "
                        f"peak {peak / 2**20:,.0f} MiB",
                        flush=True,
                    )
        # Other load only ever slows a run down: keep each configuration's fastest run.
        results = [max(group, key=lambda r: r["tokens_per_s"]) for group in runs.values()]
        results.sort(key=lambda r: (r["trainer"] != "agentmill", r["mode"]))
        print_table(results, args, setup)
        if args.json:
            everything = {"setup": setup, "best": results, "runs": [r for group in runs.values() for r in group]}
            Path(args.json).write_text(json.dumps(everything, indent=2), encoding="utf-8")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
