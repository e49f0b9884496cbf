"""Best-fit packing, the deterministic data plan, and collation into model inputs.

Guarantees:

- :func:`best_fit_pack` puts every index in exactly one bin, no bin over ``capacity``; it is
  best-fit decreasing (each item, longest first, goes to the fullest bin it fits in).
- :func:`epoch_bins` is a pure function of (lengths, capacity, seed, epoch, packing): the same
  arguments give the same bins in the same order on every rank and every run; this is what makes
  ``--resume`` continue on exactly the data an uninterrupted run would have seen.
- :func:`collate` keeps samples apart inside a packed row: targets are shifted *within* each sample
  (a sample's first token is never predicted from its neighbour), position ids restart at 0 per
  sample, and ``segment_ids`` give the block-diagonal mask (:func:`block_causal_mask`); padding is
  its own segment and is never a target.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from train.data import IGNORE_INDEX, TokenizedSample


def best_fit_pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing of item ``lengths`` into bins of ``capacity``.

    Ties in length keep input order, so shuffling the input before packing varies the bins.
    Returns bins (lists of item indices) in order of creation.
    """
    if capacity <= 0:
        raise ValueError("capacity must be positive")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    bins: list[list[int]] = []
    # (remaining capacity, bin index), sorted; best fit = smallest remaining that still fits.
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > capacity {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            remaining, b = free.pop(k)
            bins[b].append(i)
            remaining -= n
        else:
            b = len(bins)
            bins.append([i])
            remaining = capacity - n
        if remaining > 0:
            bisect.insort(free, (remaining, b))
    return bins


def epoch_bins(lengths: Sequence[int], capacity: int, seed: int, epoch: int, packing: bool) -> list[list[int]]:
    """The sequences of one epoch, in training order: sample indices per sequence.

    With packing: shuffle, best-fit pack, shuffle the bins. Without: one sample per sequence,
    shuffled. Deterministic in (seed, epoch).
    """
    rng = random.Random(f"agentmill-train:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if packing:
        packed = best_fit_pack([lengths[i] for i in order], capacity)
        bins = [[order[j] for j in b] for b in packed]
    else:
        bins = [[i] for i in order]
    rng.shuffle(bins)
    return bins


@dataclass(frozen=True)
class DataPlan:
    """How sequences map onto optimizer steps.

    Step ``s`` (0-based, global) uses the ``global_sequences`` sequences of epoch ``s //
    steps_per_epoch`` starting at ``(s % steps_per_epoch) * global_sequences``; within a step,
    micro-batch ``m`` of rank ``r`` takes chunk ``m * world_size + r``. The set of sequences in a
    step depends only on ``global_sequences``, not on how it splits into ranks and accumulation.
    """

    lengths: tuple[int, ...]
    capacity: int
    seed: int
    packing: bool
    micro_batch_size: int
    grad_accum: int
    world_size: int

    @property
    def global_sequences(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size

    def bins(self, epoch: int) -> list[list[int]]:
        return _cached_bins(self.lengths, self.capacity, self.seed, epoch, self.packing)

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.bins(0)) // self.global_sequences
        if n == 0:
            raise ValueError(
                f"an epoch has {len(self.bins(0))} sequences, fewer than one global batch "
                f"({self.global_sequences} = micro {self.micro_batch_size} x accum {self.grad_accum} x "
                f"world {self.world_size}); lower the batch size or add data"
            )
        return n

    def dropped_per_epoch(self, epoch: int = 0) -> int:
        """Sequences at the end of an epoch that do not fill a global batch (skipped that epoch)."""
        return len(self.bins(epoch)) - self.steps_per_epoch * self.global_sequences

    def step_micro_batches(self, step: int, rank: int) -> list[list[list[int]]]:
        """For global step ``step``, this rank's micro-batches: lists of sequences (sample indices)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        bins = self.bins(epoch)
        base = within * self.global_sequences
        out = []
        for m in range(self.grad_accum):
            chunk = base + (m * self.world_size + rank) * self.micro_batch_size
            out.append(bins[chunk : chunk + self.micro_batch_size])
        return out


_BIN_CACHE: dict[tuple, list[list[int]]] = {}


def _cached_bins(lengths: tuple[int, ...], capacity: int, seed: int, epoch: int, packing: bool) -> list[list[int]]:
    key = (hash(lengths), len(lengths), capacity, seed, epoch, packing)
    if key not in _BIN_CACHE:
        if len(_BIN_CACHE) > 4:
            _BIN_CACHE.clear()
        _BIN_CACHE[key] = epoch_bins(lengths, capacity, seed, epoch, packing)
    return _BIN_CACHE[key]


@dataclass
class Batch:
    """Model inputs for one micro-batch (tensors of shape ``[rows, length]``).

    ``targets[r, t]`` is the token to predict from position ``t`` (``-100``: none);
    ``groups[r, t]`` its loss group; ``segment_ids`` number the samples of a row from 0, padding
    gets its own id; ``row_lengths`` count each row's non-padding tokens.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    row_lengths: tuple[int, ...]

    @property
    def n_real(self) -> int:
        return sum(self.row_lengths)

    @property
    def n_supervised(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def n_total(self) -> int:
        return int(self.input_ids.numel())


def collate(
    rows: Sequence[Sequence[TokenizedSample]], pad_id: int, pad_to_multiple_of: int = 1, pad_to: int | None = None
) -> Batch:
    """Concatenate each row's samples and right-pad rows to a common length (see module docs)."""
    lengths = [sum(len(s) for s in row) for row in rows]
    width = max(lengths) if pad_to is None else pad_to
    if pad_to is not None and max(lengths) > pad_to:
        raise ValueError(f"a row has {max(lengths)} tokens > pad_to={pad_to}")
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    groups = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for k, sample in enumerate(row):
            n = len(sample)
            input_ids[r, t : t + n] = torch.tensor(sample.input_ids, dtype=torch.long)
            # Shift within the sample: position j predicts token j+1 of the same sample.
            targets[r, t : t + n - 1] = torch.tensor(sample.labels[1:], dtype=torch.long)
            groups[r, t : t + n - 1] = torch.tensor(sample.groups[1:], dtype=torch.long)
            position_ids[r, t : t + n] = torch.arange(n)
            segment_ids[r, t : t + n] = k
            t += n
        if t < width:  # padding: one more segment, positions restart so it is a harmless block
            position_ids[r, t:] = torch.arange(width - t)
            segment_ids[r, t:] = len(row)
    return Batch(input_ids, targets, groups, position_ids, segment_ids, row_lengths=tuple(lengths))


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive ``[rows, 1, L, L]`` mask: token ``q`` sees ``k`` iff ``k <= q`` and same segment.

    Works with eager and SDPA attention (0 = attend, dtype min = blocked); every row of the mask
    has at least its diagonal open, so no softmax row is empty.
    """
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = (same & causal)[:, None, :, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def flatten_for_varlen(batch: Batch) -> Batch:
    """One row holding every row's real tokens (no padding), for flash-attention varlen.

    Position ids restart per sample, which is how ``flash_attention_2`` in ``transformers`` finds
    the sequence boundaries (``cu_seqlens``) of a packed row; segment ids stay unique per sample.
    """
    pieces: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("input_ids", "targets", "groups", "position_ids", "segment_ids")
    }
    offset = 0
    for r, n in enumerate(batch.row_lengths):
        for key in pieces:
            pieces[key].append(getattr(batch, key)[r, :n])
        pieces["segment_ids"][-1] = pieces["segment_ids"][-1] + offset
        offset += int(batch.segment_ids[r].max()) + 1
    flat = {k: torch.cat(v)[None] for k, v in pieces.items()}
    return Batch(**flat, row_lengths=(batch.n_real,))


def varlen_kwargs(flat: Batch) -> dict[str, torch.Tensor | int]:
    """``cu_seq_lens`` / ``max_length`` of a flattened row (:func:`flatten_for_varlen`), the flash-
    attention kwargs ``transformers`` accepts so it need not re-derive them from position ids."""
    if flat.input_ids.shape[0] != 1:
        raise ValueError("varlen kwargs need a single flattened row")
    starts = torch.nonzero(flat.position_ids[0] == 0).flatten()
    cu = torch.cat([starts, torch.tensor([flat.input_ids.shape[1]])]).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}
