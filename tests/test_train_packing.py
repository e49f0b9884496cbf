"""Packing, data plan, masks and loss normalisation (in-process, tiny Llama, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from train_helpers import demo_shards, tiny_assets

from train.config import CosineSchedule, deepspeed_config
from train.data import IGNORE_INDEX, TokenizedSample, labels_from_spans, load_samples, tokenize_all
from train.loss import backward_scale, group_sums, per_segment_loss, token_losses
from train.model import build_model, forward_token_losses
from train.packing import (
    DataPlan,
    best_fit_pack,
    block_causal_mask,
    collate,
    epoch_bins,
    flatten_for_varlen,
    varlen_kwargs,
)
from train.templates import ensure_special_tokens, load_template

# ---- bin packing ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 100), max_size=60), st.integers(100, 150))
def test_best_fit_pack_invariants(lengths, capacity):
    bins = best_fit_pack(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(load <= capacity for load in loads)
    # Any-fit property: a bin is only opened when its first item fits no earlier bin, so no two
    # bins could be merged.
    for a in range(len(loads)):
        for b in range(a + 1, len(loads)):
            assert loads[a] + loads[b] > capacity
    # No two items longer than half the capacity can share a bin.
    big = sum(1 for n in lengths if 2 * n > capacity)
    assert len(bins) >= big


def test_best_fit_prefers_the_fullest_bin():
    # Items 6, 5 open two bins (6 and 5 do not fit together in 10); 4 fits both (remaining 4 and
    # 5): best fit puts it with the 6.
    bins = best_fit_pack([6, 5, 4], 10)
    assert bins == [[0, 2], [1]]
    with pytest.raises(ValueError):
        best_fit_pack([11], 10)


def test_epoch_bins_are_deterministic_and_vary_by_epoch():
    lengths = [((i * 37) % 90) + 5 for i in range(200)]
    a = epoch_bins(lengths, 256, seed=3, epoch=0, packing=True)
    assert a == epoch_bins(lengths, 256, seed=3, epoch=0, packing=True)
    assert a != epoch_bins(lengths, 256, seed=3, epoch=1, packing=True)
    assert a != epoch_bins(lengths, 256, seed=4, epoch=0, packing=True)
    unpacked = epoch_bins(lengths, 256, seed=3, epoch=0, packing=False)
    assert sorted(b[0] for b in unpacked) == list(range(200)) and all(len(b) == 1 for b in unpacked)
    assert len(a) < len(unpacked) / 2


def test_data_plan_step_content_is_independent_of_rank_and_accumulation_split():
    lengths = tuple(((i * 53) % 120) + 8 for i in range(300))

    def step_sequences(micro: int, accum: int, world: int, step: int) -> list[tuple[int, ...]]:
        plan = DataPlan(lengths, 256, 0, True, micro, accum, world)
        return sorted(tuple(seq) for r in range(world) for mb in plan.step_micro_batches(step, r) for seq in mb)

    for step in (0, 3, 11):
        reference = step_sequences(4, 1, 1, step)
        assert step_sequences(1, 2, 2, step) == reference
        assert step_sequences(2, 1, 2, step) == reference
        assert step_sequences(1, 4, 1, step) == reference
    plan = DataPlan(lengths, 256, 0, True, 1, 2, 2)
    seen = [
        tuple(s)
        for step in range(plan.steps_per_epoch)
        for r in range(2)
        for mb in plan.step_micro_batches(step, r)
        for s in mb
    ]
    assert len(seen) == len(set(seen)) == plan.steps_per_epoch * 4
    assert len(plan.bins(0)) - len(seen) == plan.dropped_per_epoch() < 4
    # Step s of epoch 1 continues on epoch 1's (different) order.
    first = plan.step_micro_batches(plan.steps_per_epoch, 0)
    assert first[0][0] == plan.bins(1)[0]


def test_too_small_dataset_is_an_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        _ = DataPlan((10, 10), 64, 0, False, 2, 1, 2).steps_per_epoch


# ---- collation and masks ------------------------------------------------------------------------


def fake(n: int, supervised_from: int, start_id: int = 10) -> TokenizedSample:
    ids = list(range(start_id, start_id + n))
    labels = [IGNORE_INDEX] * supervised_from + ids[supervised_from:]
    groups = [-1] * supervised_from + [0] * (n - supervised_from)
    return TokenizedSample(f"s{start_id}", "agent", ids, labels, groups, n - max(1, supervised_from))


def test_collate_shifts_within_samples_and_restarts_positions():
    a, b = fake(5, 2, 10), fake(4, 0, 50)
    batch = collate([[a, b], [b]], pad_id=0, pad_to_multiple_of=4)
    assert batch.input_ids.shape == (2, 12)
    assert batch.row_lengths == (9, 4) and batch.n_real == 13 and batch.n_total == 24
    row = batch.targets[0].tolist()
    # a: positions 0..4 predict a[1..4]; a's last position predicts nothing (not b's first token).
    assert row[:5] == [IGNORE_INDEX, 12, 13, 14, IGNORE_INDEX]
    # b's first token (labelled in b) is never a target: no position before it is in b.
    assert row[5:9] == [51, 52, 53, IGNORE_INDEX]
    assert row[9:] == [IGNORE_INDEX] * 3
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]
    assert batch.segment_ids[0].tolist() == [0] * 5 + [1] * 4 + [2] * 3
    assert batch.n_supervised == 3 + 3 + 3


def test_block_causal_mask():
    seg = torch.tensor([[0, 0, 1, 1, 1, 2]])
    mask = block_causal_mask(seg) == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert mask.shape == (1, 1, 6, 6)
    assert torch.equal(mask[0, 0], expected)


def test_flatten_for_varlen_drops_padding_and_keeps_segments_apart():
    a, b = fake(5, 2, 10), fake(4, 0, 50)
    flat = flatten_for_varlen(collate([[a, b], [b]], pad_id=0, pad_to_multiple_of=8))
    assert flat.input_ids.shape == (1, 13)
    assert flat.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2, 3]
    assert len(set(flat.segment_ids[0].tolist())) == 3
    assert flat.n_supervised == 9
    kwargs = varlen_kwargs(flat)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 5, 9, 13] and kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == 5


def test_labels_from_spans_rule():
    # tokens: [0,3) [3,5) [5,9) [9,9) [9,12) ; span [4, 10)
    offsets = [(0, 3), (3, 5), (5, 9), (9, 9), (9, 12)]
    labels, groups, straddling = labels_from_spans(offsets, [(4, 10, 0)], [1, 2, 3, 4, 5], [7])
    assert labels == [IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX, 5]
    assert groups == [-1, -1, 7, -1, 7]
    assert straddling == 1


# ---- packed == unpacked, on a real tiny Llama --------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    base = tmp_path_factory.getbasetemp()
    tok_dir, config = tiny_assets(base)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    template = load_template("llama2")
    ensure_special_tokens(tokenizer, template)
    samples, _ = tokenize_all(load_samples([str(demo_shards(base))]), tokenizer, template, 512)
    return tokenizer, config, samples


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batch_gives_the_same_per_sample_loss_as_unpacked(tiny, attention):
    tokenizer, config, samples = tiny
    torch.manual_seed(0)
    model = build_model(None, str(config), attention, torch.float32, len(tokenizer)).eval()
    chosen = sorted(samples, key=len)[:4]
    assert sum(len(s) for s in chosen) <= 512
    with torch.no_grad():
        alone = []
        for s in chosen:
            losses, batch = forward_token_losses(
                model, collate([[s]], tokenizer.pad_token_id), attention, torch.float32, "cpu"
            )
            alone.append(per_segment_loss(losses, batch.targets, batch.segment_ids)[(0, 0)])
        packed_batch = collate([chosen], tokenizer.pad_token_id, pad_to=512)
        losses, batch = forward_token_losses(model, packed_batch, attention, torch.float32, "cpu")
        packed = per_segment_loss(losses, batch.targets, batch.segment_ids)
        # Negative control: the same packed row without the block-diagonal mask (plain causal
        # attention, positions not restarted) leaks across samples and changes the losses.
        leaky = model(input_ids=packed_batch.input_ids).logits
        leaky_losses = per_segment_loss(token_losses(leaky, batch.targets), batch.targets, batch.segment_ids)
    for k, value in enumerate(alone):
        assert packed[(0, k)] == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert packed[(0, 0)] == pytest.approx(leaky_losses[(0, 0)], rel=1e-5)  # the first sample sees no other
    assert any(abs(leaky_losses[(0, k)] - alone[k]) > 1e-3 for k in range(1, len(chosen)))


def test_normalised_gradients_do_not_depend_on_the_split(tiny):
    """sum(token losses) / N over the step, whether in one batch, micro-batches or 'ranks'."""
    tokenizer, config, samples = tiny
    torch.manual_seed(0)
    model = build_model(None, str(config), "sdpa", torch.float32, len(tokenizer))
    chosen = sorted(samples, key=len)[:6]
    pad = tokenizer.pad_token_id

    def grads_of(parts: list[list[list[TokenizedSample]]], world: int) -> list[torch.Tensor]:
        """parts: per rank, per micro-batch, one row each; DeepSpeed-style: sum over micro-batches,
        mean over ranks."""
        batches = [[collate([row], pad) for row in rank] for rank in parts]
        n_global = sum(b.n_supervised for rank in batches for b in rank)
        per_rank = []
        for rank in batches:
            model.zero_grad()
            for b in rank:
                losses, _ = forward_token_losses(model, b, "sdpa", torch.float32, "cpu")
                (losses.sum() * backward_scale(n_global, world)).backward()
            per_rank.append([p.grad.clone() for p in model.parameters()])
        return [sum(g) / world for g in zip(*per_rank, strict=True)]

    one = grads_of([[chosen]], 1)  # everything packed in one row
    accum = grads_of([[chosen[:2], chosen[2:3], chosen[3:]]], 1)
    ranks = grads_of([[chosen[:1], chosen[1:3]], [chosen[3:5], chosen[5:]]], 2)
    # The plain token mean over all supervised tokens, computed directly:
    model.zero_grad()
    b = collate([[s] for s in chosen], pad)
    losses, _ = forward_token_losses(model, b, "sdpa", torch.float32, "cpu")
    (losses.sum() / b.n_supervised).backward()
    direct = [p.grad.clone() for p in model.parameters()]
    for reference in (accum, ranks, direct):
        for g1, g2 in zip(one, reference, strict=True):
            torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)


def test_group_sums():
    losses = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    targets = torch.tensor([[5, IGNORE_INDEX, 6, 7]])
    groups = torch.tensor([[0, -1, 2, 2]])
    out = group_sums(losses, targets, groups)
    assert out[0, 0] == 1.0 and out[0, 2] == 7.0 and out[1, 2] == 2.0 and out[1].sum() == 3


# ---- config ----------------------------------------------------------------------------------------


def test_cosine_schedule_with_warmup():
    s = CosineSchedule.from_ratio(total=100, warmup_ratio=0.02)
    assert s.warmup == 2
    assert s(0) == pytest.approx(0.5) and s(1) == pytest.approx(1.0)
    assert s(2) == pytest.approx(1.0)
    assert s(51) == pytest.approx(0.5, abs=1e-9)
    assert s(99) < 0.001 and s(99) > 0
    assert [s(i) for i in range(2, 100)] == sorted((s(i) for i in range(2, 100)), reverse=True)


@pytest.mark.parametrize("name", ["zero2", "zero2_offload", "zero3", "zero3_offload"])
def test_deepspeed_configs_resolve(name):
    from train.config import CONFIG_DIR

    config = deepspeed_config(
        str(CONFIG_DIR / f"{name}.json"), micro=2, accum=4, world_size=8, precision="bf16", clip=1.0, optimizer=None
    )
    text = json.dumps(config)
    assert '"auto"' not in text
    assert config["train_batch_size"] == 64 and config["gradient_clipping"] == 1.0
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["stage"] == (3 if "zero3" in name else 2)
    if "zero3" in name:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    fp32 = deepspeed_config(
        str(CONFIG_DIR / f"{name}.json"), micro=1, accum=1, world_size=2, precision="fp32", clip=0.5, optimizer=None
    )
    assert fp32["bf16"]["enabled"] is False and fp32["train_batch_size"] == 2
