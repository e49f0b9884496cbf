"""Token losses, per-group statistics, and the normalisation that makes packing a no-op.

The training objective of one optimizer step is ``sum of supervised token losses / N``, where
``N`` is the number of supervised tokens in the whole step: all micro-batches of the gradient
accumulation on all ranks. :func:`backward_scale` gives the factor each micro-batch's loss sum is
multiplied by before ``engine.backward(..., scale_wrt_gas=False)``: DeepSpeed sums gradients over
accumulation steps and averages them over data-parallel ranks, so the factor is
``world_size / N``. The result does not depend on how samples are packed into rows, rows into
micro-batches, or micro-batches onto ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.data import GROUPS, IGNORE_INDEX


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position (float32), 0 where ``targets == -100``. Shape of ``targets``."""
    flat = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return flat.reshape(targets.shape)


def backward_scale(global_supervised: int, world_size: int) -> float:
    """Multiplier for a micro-batch's loss *sum* so that gradients equal d(sum / N)/dθ (see module doc)."""
    if global_supervised <= 0:
        raise ValueError("a step with no supervised token cannot be normalised")
    return world_size / global_supervised


def group_sums(losses: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``[2, len(GROUPS)]`` float64: per-group loss sums (row 0) and supervised-token counts (row 1)."""
    supervised = targets != IGNORE_INDEX
    g = groups[supervised]
    if bool((g < 0).any()):
        raise ValueError("a supervised token has no loss group")
    out = torch.zeros(2, len(GROUPS), dtype=torch.float64, device=losses.device)
    out[0].index_add_(0, g, losses.detach()[supervised].double())
    out[1].index_add_(0, g, torch.ones_like(g, dtype=torch.float64))
    return out


def per_segment_loss(
    losses: torch.Tensor, targets: torch.Tensor, segment_ids: torch.Tensor
) -> dict[tuple[int, int], float]:
    """Mean token loss per ``(row, segment)`` over supervised positions (for tests and analysis)."""
    out: dict[tuple[int, int], float] = {}
    supervised = targets != IGNORE_INDEX
    for r in range(targets.shape[0]):
        for seg in segment_ids[r].unique().tolist():
            sel = supervised[r] & (segment_ids[r] == seg)
            if bool(sel.any()):
                out[(r, int(seg))] = float(losses[r][sel].mean())
    return out
