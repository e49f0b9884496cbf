"""tag_capabilities rules and balance shares (unit and on real aligned data)."""

from __future__ import annotations

import glob

import pytest

from schemas import Capability, Lineage, Message, Role, Sample, StepLedger
from tests.helpers import parse_file
from transforms.align import Align
from transforms.balance import Balance, BalanceConfig, Balancer
from transforms.base import Filtered, Stat, StepContext
from transforms.tag_capabilities import TagConfig, capability_of, tag

CTX = StepContext(step_id="tag")


def sample(kind="agent", messages=()) -> Sample:
    return Sample(id="s", kind=kind, messages=list(messages), lineage=Lineage(source="x", source_id="1"))


def assistant(content="", part=None, loss=True, **extra) -> Message:
    return Message(role=Role.ASSISTANT, content=content, part=part, loss=loss, **extra)


@pytest.mark.parametrize(
    ("kind", "message", "expected"),
    [
        ("agent", assistant("I think", "thought"), Capability.REASONING),
        ("agent", assistant("done", "answer"), Capability.REASONING),
        ("agent", assistant("get_weather", "tool"), Capability.RETRIEVAL),
        ("agent", assistant("{}", "arguments"), Capability.UNDERSTANDING),
        ("agent", assistant("Thought: x\nAction: y", "react"), Capability.INSTRUCTION_FOLLOWING),
        ("agent", assistant("Thought: x\nAction: y"), Capability.INSTRUCTION_FOLLOWING),
        ("agent", assistant("plain words"), Capability.REASONING),
        ("general", assistant("hello", "thought"), Capability.GENERAL),
        ("instruction", assistant("{}", "react"), Capability.INSTRUCTION_FOLLOWING),
        ("negative", assistant("I can answer without tools."), Capability.GENERAL),
        ("agent", Message(role=Role.USER, content="q"), None),
    ],
)
def test_capability_rules(kind, message, expected):
    assert capability_of(sample(kind), message, TagConfig()) == expected


def test_tag_keeps_existing_tags_unless_overwrite():
    preset = sample(messages=[assistant("x", "tool", capability=Capability.REASONING)])
    assert tag(preset, TagConfig(), CTX).messages[0].capability is Capability.REASONING
    assert tag(preset, TagConfig(overwrite=True), CTX).messages[0].capability is Capability.RETRIEVAL
    assert tag(preset, TagConfig(), CTX).lineage.steps == ["tag"]


def run_balance(samples, **config):
    balancer = Balancer(BalanceConfig(**config), StepContext(step_id="balance"))
    ledger = StepLedger(type="balance")
    kept, filtered = [], []
    for s in samples:
        for out in balancer(s):
            if isinstance(out, Stat):
                ledger.stats[out.name] = ledger.stats.get(out.name, 0) + out.value
            elif isinstance(out, Filtered):
                filtered.append(out)
            else:
                kept.append(out)
    return kept, filtered, Balance.summarize(BalanceConfig(**config), ledger)


def test_loss_mask_keeps_conversations_and_only_masks_weighted_capabilities():
    messages = [
        Message(role=Role.USER, content="q"),
        assistant("think " * 5, "thought", capability=Capability.REASONING),
        assistant("tool", "tool", capability=Capability.RETRIEVAL),
        assistant("{}", "arguments", capability=Capability.UNDERSTANDING),
    ]
    samples = [sample(messages=messages).model_copy(update={"id": f"s{i}"}) for i in range(400)]
    kept, filtered, summary = run_balance(samples)
    assert not filtered and len(kept) == 400
    assert all(len(s.messages) == 4 and s.messages[1].loss for s in kept)  # reasoning weight 1
    retrieval_kept = sum(s.messages[2].loss for s in kept) / 400
    understanding_kept = sum(s.messages[3].loss for s in kept) / 400
    assert 0.18 < retrieval_kept < 0.32 and 0.68 < understanding_kept < 0.82
    assert summary["turns"]["after"]["retrieval"] == sum(s.messages[2].loss for s in kept)
    assert kept == run_balance(samples)[0]  # deterministic


def test_loss_mask_filters_samples_left_without_supervision():
    only_retrieval = [
        sample(messages=[assistant("t", "tool", capability=Capability.RETRIEVAL)]).model_copy(update={"id": f"r{i}"})
        for i in range(50)
    ]
    kept, filtered, _ = run_balance(only_retrieval, weights={"retrieval": 0.0})
    assert not kept and len(filtered) == 50 and {f.reason for f in filtered} == {"no_supervised_turn"}


def test_subsample_drops_whole_samples_by_dominant_capability():
    general = [
        sample("general", [assistant("hi there", capability=Capability.GENERAL)]).model_copy(update={"id": f"g{i}"})
        for i in range(300)
    ]
    kept, filtered, _ = run_balance(general, mode="subsample", weights={"general": 0.5})
    assert 110 < len(kept) < 190 and len(kept) + len(filtered) == 300
    assert all(s.messages[0].loss for s in kept)


def test_weights_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BalanceConfig(weights={"retrieval": 1.5})
    with pytest.raises(ValueError, match="tokenizer"):
        BalanceConfig(counter="tokenizer")


@pytest.mark.real_data
@pytest.mark.parametrize(
    "weights",
    [
        {"reasoning": 1.0, "retrieval": 0.25, "understanding": 0.75, "instruction_following": 1.0},
        {"reasoning": 1.0, "retrieval": 0.5, "understanding": 0.75, "instruction_following": 1.0},
    ],
    ids=["paper", "release"],
)
def test_achieved_shares_on_real_agentinstruct_are_within_one_point(external, weights):
    align = Align({"keep_format_share": 0.1}, StepContext(step_id="align")).processor()
    samples = []
    for path in sorted(glob.glob(str(external("agentinstruct_thudm") / "*.parquet"))):
        for traj in parse_file(path, "agentinstruct")[0]:
            samples += [tag(o, TagConfig(), CTX) for o in align(traj) if isinstance(o, Sample)]
    _, _, summary = run_balance(samples, weights=weights)
    for unit in ("tokens", "turns"):
        target, achieved = summary[unit]["target_share"], summary[unit]["achieved_share"]
        assert set(target) == {"reasoning", "retrieval", "understanding", "instruction_following"}
        for capability in target:
            assert abs(target[capability] - achieved[capability]) < 0.01, (unit, capability)
    before, after = summary["tokens"]["before"], summary["tokens"]["after"]
    assert after["reasoning"] == before["reasoning"] and after["retrieval"] < before["retrieval"]


def test_partial_maps_are_laid_over_the_defaults():
    weights = BalanceConfig(weights={"retrieval": 0.5}).weights
    assert weights[Capability.RETRIEVAL] == 0.5 and weights[Capability.UNDERSTANDING] == 0.75
    by_kind = TagConfig(by_kind={"negative": "reasoning"}).by_kind
    assert by_kind["negative"] is Capability.REASONING and by_kind["general"] is Capability.GENERAL
    with pytest.raises(ValueError):
        TagConfig(by_kind={"negatve": "general"})  # a typo is an error, not ignored
    untagged = TagConfig(by_kind={"general": None})
    assert capability_of(sample("general"), assistant("x", "thought"), untagged) is Capability.REASONING
