"""The SFT loop behind ``train/sft.py``: shards -> labelled tokens -> packed batches -> DeepSpeed.

What a run guarantees (see docs/training.md):

- labels come from the per-message loss flags (``train.data``); dropped samples are counted in
  ``OUT/data_report.json`` and logged;
- the step objective is the sum of supervised token losses over the whole step (all micro-batches,
  all ranks) divided by the global supervised-token count (``train.loss``), whatever the packing;
- the data order is a pure function of (seed, step) (``train.packing.DataPlan``), so ``--resume``
  continues an interrupted run on the same loss curve;
- at the end ``OUT`` is a Hugging Face model directory with the tokenizer and the chat template used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import socket
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from schemas.integrity import IntegrityError
from train.checkpoint import data_fingerprint, export_hf_model, load_checkpoint, resolve_resume, save_checkpoint
from train.config import (
    CosineSchedule,
    build_parser,
    deepspeed_config,
    grad_accum_steps,
    offloads_optimizer,
    resolve_precision,
    validate_args,
    zero_stage,
)
from train.data import GROUPS, load_samples, strict_problem, tokenize_all
from train.loss import backward_scale, group_sums
from train.metrics import MetricsWriter
from train.model import DTYPES, build_model, forward_token_losses, resolve_attention
from train.packing import DataPlan, collate
from train.templates import ensure_special_tokens, load_template, stop_token_ids

log = logging.getLogger("agentmill.train")


def _model_type(args: argparse.Namespace) -> str | None:
    """The model's ``model_type`` (what ``transformers serve`` picks a fallback response template by)."""
    if args.chat_template != "tokenizer":
        return None  # only the tokenizer's own template falls back to serve's response templates
    if args.model_config is not None:
        with open(args.model_config, encoding="utf-8") as handle:
            return json.load(handle).get("model_type")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(args.model).model_type
    except (OSError, ValueError):
        return None


def _single_process_env() -> None:
    """Let ``python train/sft.py`` run without a launcher (world size 1)."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )


def _skip_cpu_shm_op(device_type: str) -> None:
    """On CPU, DeepSpeed compiles a shared-memory C++ op with g++ at start-up (minutes on a small
    machine, once per cache) that only its inference all-reduce uses; training uses gloo. Skip it."""
    if device_type != "cpu" or os.environ.get("AGENTMILL_DS_CPU_SHM_OP") == "1":
        return
    import importlib

    try:  # `import deepspeed.comm.torch as m` would bind the `torch` package re-exported there
        ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    except ImportError:  # pragma: no cover - layout of other DeepSpeed versions
        return
    if hasattr(ds_comm_torch, "build_shm_op"):
        ds_comm_torch.build_shm_op = lambda: None


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "transformers", "train.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING if rank == 0 else logging.ERROR)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _all_reduce(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def _optimizer_setup(args: argparse.Namespace, device_type: str, ds_offload: bool) -> str:
    """``torch`` (torch.optim.AdamW) or ``deepspeed`` (DeepSpeed builds AdamW: CPU-Adam when
    offloading, fused Adam on GPU). ``auto`` picks DeepSpeed's on GPU or when offloading."""
    if args.optimizer != "auto":
        return args.optimizer
    return "deepspeed" if (ds_offload or device_type == "cuda") else "torch"


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases and norm weights)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate_args(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _single_process_env()

    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from transformers import AutoTokenizer

    device_type = get_accelerator().device_name()
    _skip_cpu_shm_op(device_type)
    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    _setup_logging(rank)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device: torch.device | str = torch.device("cuda", local_rank)
    else:
        device = torch.device(device_type)
    precision = resolve_precision(args.precision, device_type)
    dtype = DTYPES[precision]
    seed_everything(args.seed)
    os.makedirs(args.output, exist_ok=True)

    # ---- data -------------------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    if not tokenizer.is_fast:
        raise SystemExit("a fast tokenizer is required (labels use its offset mapping)")
    template = load_template(args.chat_template, tokenizer, args.response_template, _model_type(args))
    if args.pass_tools:
        log.warning("--pass-tools is deprecated and does nothing: tools are rendered by default (--no-tools: off)")
    check_round_trip = args.round_trip and template.response is not None
    if args.round_trip and not check_round_trip:
        message = f"template {template.name!r} has no response template, so the round trip cannot run"
        if args.strict:
            raise SystemExit(f"--strict: {message} (give --response-template FILE)")
        log.warning("%s: supervised turns are not checked to parse back (give --response-template FILE)", message)
    added = ensure_special_tokens(tokenizer, template)
    if added:
        log.warning("added special tokens %s for template %s (embeddings are resized)", added, template.name)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        samples = load_samples(args.data)
    except IntegrityError as exc:  # a shard missing, cut or altered: never train on part of the data
        raise SystemExit(f"error: {exc}") from None
    tokenized, report = tokenize_all(
        samples, tokenizer, template, args.max_seq_len, args.system_prompt, args.tools, check_round_trip
    )
    log.info("calls in the data: %s (docs/training.md, Tools and calls)", report.call_convention)
    if check_round_trip:
        log.info(
            "round trip (%s): %d supervised turns parse back, %d samples dropped",
            template.name,
            report.round_trip_turns,
            report.dropped.get("round_trip", 0),
        )
    problem = strict_problem(report, template.name) if args.strict else None
    if problem is not None:
        raise SystemExit(f"--strict: {problem}")
    if report.calls_as_text:
        log.warning(
            "template %r renders no native calls: %d messages' calls were written into their content as JSON",
            template.name,
            report.calls_as_text,
        )
    if report.dropped:
        log.warning(
            "%d of %d samples not trained on: %s (ids in data_report.json)",
            sum(report.dropped.values()),
            report.samples_in,
            dict(report.dropped),
        )
    if report.straddling_tokens:
        log.warning(
            "%d tokens straddle a prompt/answer boundary (tokenizer merges across the template's "
            "generation prompt); they are context, not labels",
            report.straddling_tokens,
        )
    if not tokenized:
        raise SystemExit("no trainable sample: every sample was dropped (see data_report.json)")
    accum = grad_accum_steps(args, world)
    lengths = [len(s) for s in tokenized]
    plan = DataPlan(tuple(lengths), args.max_seq_len, args.seed, args.packing, args.micro_batch_size, accum, world)
    try:
        steps_per_epoch = plan.steps_per_epoch
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    total_steps = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))
    fingerprint = data_fingerprint([s.id for s in tokenized], lengths)
    if rank == 0:
        epoch0 = plan.bins(0)
        used = steps_per_epoch * plan.global_sequences
        info = {
            **report.as_dict(),
            "sequences_per_epoch": len(epoch0),
            "sequences_per_step": plan.global_sequences,
            "steps_per_epoch": steps_per_epoch,
            "sequences_skipped_per_epoch": plan.dropped_per_epoch(0),
            "packing": args.packing,
            "max_seq_len": args.max_seq_len,
            "mean_tokens_per_sequence": sum(lengths[i] for b in epoch0[:used] for i in b) / max(1, used),
            "data_fingerprint": fingerprint,
        }
        with open(os.path.join(args.output, "data_report.json"), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2)
        log.info(
            "%d samples kept (%d truncated, %d dropped), %d sequences/epoch, %d steps/epoch, %d steps",
            report.samples_kept,
            report.samples_truncated,
            sum(report.dropped.values()),
            len(epoch0),
            steps_per_epoch,
            total_steps,
        )

    # ---- model and engine --------------------------------------------------------------------
    attention = resolve_attention(args.attention, device_type)
    with open(args.deepspeed, encoding="utf-8") as handle:
        raw_config = json.load(handle)
    optimizer_kind = _optimizer_setup(args, device_type, offloads_optimizer(raw_config))
    ds_optimizer = None
    if optimizer_kind == "deepspeed":
        ds_optimizer = {
            "type": "AdamW",
            "params": {
                "lr": args.lr,
                "betas": [args.adam_beta1, args.adam_beta2],
                "eps": args.adam_eps,
                "weight_decay": args.weight_decay,
            },
        }
    ds_config = deepspeed_config(
        args.deepspeed,
        micro=args.micro_batch_size,
        accum=accum,
        world_size=world,
        precision=precision,
        clip=args.clip,
        optimizer=ds_optimizer,
    )
    stage = zero_stage(ds_config)
    hf_ds_config = None
    if stage == 3:  # must exist before the model is built: parameters are partitioned at creation
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # kept alive until the end on purpose
    torch.manual_seed(args.seed)
    model = build_model(
        args.model,
        args.model_config,
        attention,
        dtype,
        len(tokenizer),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    groups = _param_groups(model, args.weight_decay)
    optimizer = None
    if optimizer_kind == "torch":
        optimizer = torch.optim.AdamW(
            groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps, foreach=False
        )
    schedule = CosineSchedule.from_ratio(total_steps, args.warmup_ratio, args.min_lr_ratio)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=ds_config,
    )
    if rank == 0:
        with open(os.path.join(args.output, "train_config.json"), "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "deepspeed": ds_config, "template": template.name}, handle, indent=2)

    # ---- resume ------------------------------------------------------------------------------
    def data_identity() -> dict[str, Any]:
        """What fixes the data order: equal values on resume mean the same rows at every step."""
        return {
            "seed": args.seed,
            "data_fingerprint": fingerprint,
            "sequences_per_step": plan.global_sequences,
            "max_seq_len": args.max_seq_len,
            "packing": args.packing,
        }

    start_step = 0
    resumed = False
    if args.resume:
        target = resolve_resume(args.resume, args.output)
        if target is None:
            log.info("--resume auto: no checkpoint in %s, starting from step 0", args.output)
        else:
            client = load_checkpoint(engine, *target)
            expected = data_identity()
            for key, value in expected.items():
                if client.get(key) != value:
                    raise SystemExit(
                        f"cannot resume exactly from {target[0]}/{target[1]}: {key} was {client.get(key)!r}, "
                        f"now {value!r} (same data, template, seed, max-seq-len, packing and rows per step needed)"
                    )
            start_step = int(client["global_step"])
            resumed = True
            log.info("resumed from %s/%s at step %d", target[0], target[1], start_step)

    metrics = MetricsWriter(args.output, rank == 0, args.tensorboard, resume_step=start_step if resumed else None)

    def client_state(step: int) -> dict[str, Any]:
        return {"global_step": step, **data_identity()}

    # ---- loop --------------------------------------------------------------------------------
    last_saved = start_step if resumed else -1
    engine.train()
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        micro_batches = plan.step_micro_batches(step, rank)
        batches = [
            collate([[tokenized[i] for i in seq] for seq in mb], pad_id, args.pad_to_multiple_of)
            for mb in micro_batches
        ]
        local = torch.tensor([sum(b.n_supervised for b in batches)], dtype=torch.float64)
        n_global = int(_all_reduce(local, device).item())
        scale = backward_scale(n_global, world)
        lr = float(scheduler.get_last_lr()[0])
        stats = torch.zeros(2, len(GROUPS), dtype=torch.float64)
        tokens = torch.zeros(2, dtype=torch.float64)  # non-pad, total (with padding)
        for batch in batches:
            losses, used = forward_token_losses(engine, batch, attention, dtype, device)
            engine.backward(losses.sum() * scale, scale_wrt_gas=False)
            engine.step()
            stats += group_sums(losses, used.targets.to(losses.device), used.groups.to(losses.device)).cpu()
            tokens += torch.tensor([batch.n_real, batch.n_total], dtype=torch.float64)
        reduced = _all_reduce(torch.cat([stats.flatten(), tokens]), device)
        g = len(GROUPS)
        sums, counts, (real, total) = reduced[:g], reduced[g : 2 * g], reduced[2 * g :].tolist()
        elapsed = time.perf_counter() - t0
        done = step + 1
        if rank == 0 and (done % args.log_steps == 0 or done == total_steps):
            grad_norm = engine.get_global_grad_norm()
            record = {
                "step": done,
                "epoch": step / steps_per_epoch,
                "loss": float(sums.sum() / counts.sum()),
                "lr": lr,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "tokens": int(real),
                "padded_tokens": int(total),
                "supervised_tokens": int(counts.sum()),
                "tokens_per_s": real / elapsed,
                "step_time_s": elapsed,
                "loss_by_group": {GROUPS[i]: float(sums[i] / counts[i]) for i in range(g) if counts[i] > 0},
                "tokens_by_group": {GROUPS[i]: int(counts[i]) for i in range(g) if counts[i] > 0},
            }
            metrics.write(record)
            log.info("step %d/%d loss %.4f lr %.3g tok/s %.0f", done, total_steps, record["loss"], lr, real / elapsed)
        if args.save_steps and done % args.save_steps == 0:
            save_checkpoint(engine, args.output, done, client_state(done), args.keep_checkpoints)
            last_saved = done
        if done == args.stop_after_steps and done < total_steps:
            if last_saved != done:
                save_checkpoint(engine, args.output, done, client_state(done), args.keep_checkpoints)
            log.info("stopping after step %d (--stop-after-steps); resume with --resume", done)
            metrics.close()
            return 0

    if last_saved != total_steps:
        save_checkpoint(engine, args.output, total_steps, client_state(total_steps), args.keep_checkpoints)
    metrics.close()
    if args.export:
        generation = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": stop_token_ids(tokenizer, template) or None,
            "pad_token_id": pad_id,
        }
        stops = [s for s in template.stop_strings if s not in tokenizer.get_vocab()]
        if stops:
            generation["stop_strings"] = stops
        if template.response is not None:  # saved in tokenizer_config.json: what parse_response / serve use
            tokenizer.response_template = template.response
        export_hf_model(engine, args.output, tokenizer, template.source, generation, stage)
    del hf_ds_config
    return 0


def main() -> None:
    """Run training, then tear the process group down on every rank.

    On a normal return every rank first meets at a barrier, so no rank destroys its gloo / NCCL
    group (and exits) while another still writes the export or a checkpoint with it: a rank torn
    down under a peer's last collective can abort at exit ("terminate called without an active
    exception"). An exception skips the barrier, which its peers might never reach.
    """
    try:
        code = run()
        if dist.is_initialized():
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(code)
