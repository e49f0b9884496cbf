"""Step metrics as JSONL (``OUT/metrics.jsonl``) and TensorBoard events (``OUT/tensorboard``).

One JSON object per logged step: ``step``, ``epoch``, ``loss`` (sum of supervised token losses /
supervised tokens, over all micro-batches and ranks), ``lr``, ``grad_norm``, ``tokens`` (non-pad),
``padded_tokens``, ``supervised_tokens``, ``tokens_per_s``, ``step_time_s``, and
``loss_by_group`` / ``tokens_by_group`` for every loss group with supervised tokens in the step.
Only rank 0 writes. On resume, lines for steps after the checkpoint are dropped first.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics file (empty if absent)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class MetricsWriter:
    """Appends step records to JSONL and, when ``tensorboard`` is installed, to event files."""

    def __init__(self, out_dir: str, enabled: bool, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        if resume_step is not None:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            with open(self.path, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    os.path.join(out_dir, "tensorboard"), purge_step=None if resume_step is None else resume_step + 1
                )
            except ImportError:  # pragma: no cover - tensorboard is in the train extra
                log.warning("tensorboard is not installed: metrics go to %s only", self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["step"]
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens"):
                if record.get(key) is not None:
                    self._tb.add_scalar(f"train/{key}", record[key], step)
            for group, value in record.get("loss_by_group", {}).items():
                self._tb.add_scalar(f"loss_by_group/{group}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
