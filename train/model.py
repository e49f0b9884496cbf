"""Model construction and the packed forward pass.

:func:`forward_token_losses` runs a causal LM on a collated :class:`~train.packing.Batch` so that
packed samples never attend to each other: with ``flash_attention_2`` the rows are flattened into
one padding-free row whose restarting position ids delimit the samples (varlen kernels); with SDPA
or eager attention a block-diagonal causal 4D mask is passed. Either way the per-token losses of a
sample equal those of the sample run alone (up to float rounding).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from typing import Any

import torch

from train.loss import token_losses
from train.packing import Batch, block_causal_mask, flatten_for_varlen, varlen_kwargs

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_attention(attention: str, device_type: str) -> str:
    """``auto``: flash-attention-2 (varlen) on CUDA when ``flash_attn`` is installed, else SDPA + mask."""
    if attention != "auto":
        return attention
    if device_type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_model(
    model: str | None,
    model_config: str | None,
    attention: str,
    dtype: torch.dtype,
    vocab_size: int,
    gradient_checkpointing: bool = False,
) -> Any:
    """Load ``model`` (weights) or build a random-init model from the ``model_config`` JSON file.

    The embeddings are resized when the tokenizer has more tokens (``vocab_size``) than the model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_config is not None:
        with open(model_config, encoding="utf-8") as handle:
            raw = json.load(handle)
        model_type = raw.pop("model_type")
        raw.pop("architectures", None)
        config = AutoConfig.for_model(model_type, **raw)
        net = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=dtype)
    else:
        net = AutoModelForCausalLM.from_pretrained(model, attn_implementation=attention, dtype=dtype)
    if vocab_size > net.get_input_embeddings().num_embeddings:
        log.info("resizing embeddings %d -> %d", net.get_input_embeddings().num_embeddings, vocab_size)
        net.resize_token_embeddings(vocab_size)
    net.config.use_cache = False
    if gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return net


def forward_token_losses(
    model: Any, batch: Batch, attention: str, dtype: torch.dtype, device: torch.device | str
) -> tuple[torch.Tensor, Batch]:
    """Per-token losses (float32, 0 at non-targets) and the batch they align with."""
    extra: dict[str, Any] = {}
    if attention == "flash_attention_2":
        batch = flatten_for_varlen(batch)
        mask = None
        extra = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in varlen_kwargs(batch).items()}
    else:
        mask = block_causal_mask(batch.segment_ids, dtype=dtype).to(device)
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=mask,
        position_ids=batch.position_ids.to(device),
        use_cache=False,
        **extra,
    )
    return token_losses(out.logits, batch.targets.to(device)), batch
