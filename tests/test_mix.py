"""mix (and the keyed-hash helpers it uses): sizes, weights, repeats, achieved eta, real data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipelines.run import run_spec
from schemas import Lineage, Message, Role, Sample, TokenCounts
from schemas.arrow import ArrowCodec
from transforms.mix import (
    GroupDecision,
    GroupPlan,
    Mix,
    MixConfig,
    decide_group,
    field_value,
    group_id,
    plan_mix,
    repeat_copy,
)
from transforms.sampling import keep_fraction, keyed_fraction, keyed_hash, prefix_threshold, rank_key, take_by_rank

# --- keyed-hash helpers ----------------------------------------------------------------------


def test_keyed_fraction_is_stable_uniform_and_keyed():
    values = [keyed_fraction(0, "mix", f"id{i}") for i in range(4000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [keyed_fraction(0, "mix", f"id{i}") for i in range(4000)]
    assert abs(sum(values) / len(values) - 0.5) < 0.02
    assert sum(v < 0.25 for v in values) == pytest.approx(1000, abs=90)
    assert keyed_fraction(0, "mix", "id1") != keyed_fraction(1, "mix", "id1")
    assert keyed_fraction(0, "mix", "id1") != keyed_fraction(0, "mix2", "id1")
    # parts are length-prefixed: moving characters between step id and key changes the hash
    assert keyed_hash(0, "ab", "c") != keyed_hash(0, "a", "bc")
    # pinned values: a change of the hash would silently change every selection of every run
    assert keyed_hash(0, "step", "key") == 13055397273667089696
    assert keyed_fraction(7, "mix", "abc") == pytest.approx(0.533999390613884, abs=1e-15)


def test_keep_fraction_is_nested():
    small = {i for i in range(2000) if keep_fraction(3, "s", str(i), 0.1)}
    large = {i for i in range(2000) if keep_fraction(3, "s", str(i), 0.3)}
    assert small < large
    assert len(large) == pytest.approx(600, abs=70)


def test_prefix_threshold_nearest_total():
    ranked = [(rank_key(0, "s", f"k{i}"), w) for i, w in enumerate([5, 5, 5, 5])]
    order = sorted(ranked)
    threshold, total = prefix_threshold(ranked, 12)
    assert total == 10 and threshold == order[1][0]  # 10 is nearer to 12 than 15
    threshold, total = prefix_threshold(ranked, 12.5)
    assert total == 15 and threshold == order[2][0]  # a tie takes the item
    assert prefix_threshold(ranked, 0) == (None, 0.0)
    assert prefix_threshold(ranked, 100)[1] == 20
    assert prefix_threshold([(k, 1) for k, _ in ranked], 2.4)[1] == 2


def test_take_by_rank_exact_and_seeded():
    items = [f"x{i}" for i in range(50)]
    first = take_by_rank(items, 0, "s", 10)
    assert len(first) == 10 and first == take_by_rank(list(reversed(items)), 0, "s", 10)
    assert first != take_by_rank(items, 1, "s", 10)


# --- planning ----------------------------------------------------------------------------------


def groups(**units: int) -> dict[str, int]:
    """Group units by input name (unweighted inputs), e.g. groups(agent=100, general=50)."""
    return {group_id(name, "*"): n for name, n in units.items()}


def targets(plan) -> dict[str, float]:
    return {g.input if g.value == "*" else f"{g.input}[{g.value}]": g.target for g in plan.groups.values()}


def test_plan_downsamples_the_abundant_side():
    config = MixConfig(agent=["agent"], eta=0.2)
    plan = plan_mix(config, groups(agent=100, general=100), ["agent", "general"])
    assert targets(plan) == {"agent": pytest.approx(25), "general": pytest.approx(100)}
    plan = plan_mix(config, groups(agent=10, general=1000), ["agent", "general"])
    assert targets(plan) == {"agent": pytest.approx(10), "general": pytest.approx(40)}


def test_plan_upsample_and_total():
    plan = plan_mix(
        MixConfig(agent=["agent"], eta=0.2, strategy="upsample"), groups(agent=10, general=100), ["agent", "general"]
    )
    assert targets(plan) == {"agent": pytest.approx(25), "general": pytest.approx(100)}
    plan = plan_mix(
        MixConfig(agent=["agent"], eta=0.25, total=200), groups(agent=10, general=1000), ["agent", "general"]
    )
    assert targets(plan) == {"agent": pytest.approx(50), "general": pytest.approx(150)}


def test_plan_keep_agent_sizes_the_general_side_to_the_agent_side():
    config = MixConfig(agent=["agent"], eta=0.2, strategy="keep_agent")
    # scarce general data: every agent sample once, the general side repeated (400 of 100)
    plan = plan_mix(config, groups(agent=100, general=100), ["agent", "general"])
    assert targets(plan) == {"agent": pytest.approx(100), "general": pytest.approx(400)}
    assert not plan.capped
    # abundant general data: still every agent sample once, the general side cut (40 of 1000)
    plan = plan_mix(config, groups(agent=10, general=1000), ["agent", "general"])
    assert targets(plan) == {"agent": pytest.approx(10), "general": pytest.approx(40)}
    # where downsample would have cut the agent side and upsample repeated it
    assert targets(plan_mix(MixConfig(agent=["agent"], eta=0.2), groups(agent=100, general=100), ["agent", "general"]))[
        "agent"
    ] == pytest.approx(25)
    up = MixConfig(agent=["agent"], eta=0.2, strategy="upsample")
    assert targets(plan_mix(up, groups(agent=10, general=1000), ["agent", "general"]))["agent"] == pytest.approx(250)
    # no general data: the agent side is still kept (the summary shows the eta reached)
    assert targets(plan_mix(config, groups(agent=10), ["agent", "general"])) == {"agent": pytest.approx(10)}


def test_max_copies_caps_repeats_and_shrinks_the_output_instead():
    capped = MixConfig(agent=["agent"], eta=0.2, strategy="keep_agent", max_copies=3)
    plan = plan_mix(capped, groups(agent=100, general=50), ["agent", "general"])
    # 400 general units would need 8 copies of each of 50; 3 copies allow 150, so agent gets 37.5
    assert plan.capped
    assert targets(plan) == {"agent": pytest.approx(37.5), "general": pytest.approx(150)}
    roomy = plan_mix(capped.model_copy(update={"max_copies": 8}), groups(agent=100, general=50), ["agent", "general"])
    assert not roomy.capped and targets(roomy) == {"agent": pytest.approx(100), "general": pytest.approx(400)}
    up = MixConfig(agent=["agent"], eta=0.5, strategy="upsample", max_copies=2)
    assert targets(plan_mix(up, groups(agent=10, general=100), ["agent", "general"])) == {
        "agent": pytest.approx(20),
        "general": pytest.approx(20),
    }
    # a weighted input: the scarcest group sets the copies
    weighted = MixConfig(
        agent=["agent"],
        eta=0.2,
        strategy="keep_agent",
        max_copies=4,
        weights={"general": {"by": "metadata.model", "shares": {"gpt-4": 1}, "other": 4}},
    )
    available = {group_id("agent", "*"): 100, group_id("general", "gpt-4"): 10, group_id("general", None): 100}
    plan = plan_mix(weighted, available, ["agent", "general"])
    # gpt-4 limits the input to 10 / 0.2 = 50; 4 copies allow 200 general = 40 gpt-4 + 160 other
    assert plan.capped and targets(plan) == {
        "agent": pytest.approx(50),
        "general[gpt-4]": pytest.approx(40),
        "general[None]": pytest.approx(160),
    }
    # the group decision never exceeds the cap, even a float hair over it
    ranked = [(rank_key(0, "m", f"s{i}"), 1) for i in range(10)]
    hair = GroupPlan(input="g", value="*", side="general", available=10, share=1.0, target=40.000000001, max_copies=4)
    assert decide_group(hair, ranked) == GroupDecision(4, None)


def test_plan_splits_a_side_over_inputs_by_capacity():
    config = MixConfig(agent=["a1", "a2"], eta=0.5)
    plan = plan_mix(config, groups(a1=30, a2=10, general=20), ["a1", "a2", "general"])
    assert targets(plan) == {"a1": pytest.approx(15), "a2": pytest.approx(5), "general": pytest.approx(20)}


def test_plan_weights_inside_an_input():
    config = MixConfig(
        agent=["agent"],
        eta=0.2,
        weights={"general": {"by": "metadata.model", "shares": {"gpt-4": 1, "gpt-3.5": 4}}},
    )
    available = {group_id("agent", "*"): 1000, group_id("general", "gpt-4"): 100, group_id("general", "gpt-3.5"): 100}
    available[group_id("general", None)] = 7  # no model: no weight (other is None)
    plan = plan_mix(config, available, ["agent", "general"])
    # the scarcer gpt-3.5 limits the input: 100 / 0.8 = 125, of which gpt-4 gets 25
    assert targets(plan) == {
        "agent": pytest.approx(31.25),
        "general[gpt-4]": pytest.approx(25),
        "general[gpt-3.5]": pytest.approx(100),
        "general[None]": 0.0,
    }
    assert plan.groups[group_id("general", None)].share is None
    with_other = config.model_copy(
        update={"weights": {"general": config.weights["general"].model_copy(update={"other": 1.0})}}
    )
    assert plan_mix(with_other, available, ["agent", "general"]).groups[
        group_id("general", None)
    ].share == pytest.approx(1 / 6)


def test_plan_edge_cases():
    config = MixConfig(agent=["agent"], eta=0.0)
    assert targets(plan_mix(config, groups(agent=10, general=10), ["agent", "general"])) == {
        "agent": 0.0,
        "general": pytest.approx(10),
    }
    config = MixConfig(agent=["agent"], eta=1.0)
    assert targets(plan_mix(config, groups(agent=10, general=10), ["agent", "general"])) == {
        "agent": pytest.approx(10),
        "general": 0.0,
    }
    # no general data at all: downsampling cannot reach eta, so nothing is selected rather than a wrong mix
    config = MixConfig(agent=["agent"], eta=0.2)
    assert targets(plan_mix(config, groups(agent=10), ["agent", "general"])) == {"agent": 0.0}


def test_decide_group_full_copies_and_remainder():
    ranked = [(rank_key(0, "m", f"s{i}"), 1) for i in range(10)]
    plan = GroupPlan(input="a", value="*", side="agent", available=10, share=1.0, target=23.0)
    decision = decide_group(plan, ranked)
    assert decision.full == 2
    assert sum(1 for key, _ in ranked if key <= decision.threshold) == 3
    down = decide_group(plan.__class__(**{**plan.__dict__, "target": 4.0}), ranked)
    assert down.full == 0 and sum(1 for key, _ in ranked if key <= down.threshold) == 4
    excluded = decide_group(plan.__class__(**{**plan.__dict__, "share": None}), ranked)
    assert excluded == GroupDecision(0, None)


def test_repeat_copy_has_a_derived_id_and_lineage():
    original = Sample(
        id="orig",
        kind="agent",
        messages=[Message(role=Role.USER, content="hi")],
        lineage=Lineage(source="src", source_id="1", derivation="to_chat", steps=["chat"]),
        counts=TokenCounts(tokens=1),
    )
    first, second = repeat_copy(original, 1, "mix"), repeat_copy(original, 2, "mix")
    assert len({original.id, first.id, second.id}) == 3
    assert first.id == repeat_copy(original, 1, "mix").id
    assert first.lineage.derivation == "to_chat+repeat1" and first.lineage.steps == ["chat", "mix"]
    assert first.metadata["repeat_of"] == "orig" and first.messages == original.messages


def test_field_value_paths():
    s = Sample(
        id="x",
        kind="general",
        messages=[],
        lineage=Lineage(source="arena", source_id="1"),
        metadata={"model": "gpt-4", "n": 3, "flag": True},
    )
    assert field_value(s, "metadata.model") == "gpt-4"
    assert field_value(s, "metadata.n") == "3"
    assert field_value(s, "metadata.flag") == "true"
    assert field_value(s, "lineage.source") == "arena"
    assert field_value(s, "kind") == "general"
    assert field_value(s, "metadata.absent") is None


def test_config_validation():
    with pytest.raises(ValidationError):
        MixConfig(agent=[])
    with pytest.raises(ValidationError):
        MixConfig(agent=["a"], eta=1.5)
    with pytest.raises(ValidationError):
        MixConfig(agent=["a"], weights={"g": {"by": "nonsense.model", "shares": {"x": 1}}})
    with pytest.raises(ValidationError):
        MixConfig(agent=["a"], weights={"g": {"by": "metadata.model", "shares": {"x": 0}}})
    with pytest.raises(ValidationError):
        MixConfig(agent=["a"], unit="characters")
    with pytest.raises(ValidationError, match="keep_agent"):
        MixConfig(agent=["a"], eta=0.0, strategy="keep_agent")
    with pytest.raises(ValidationError):
        MixConfig(agent=["a"], max_copies=0)


# --- pipelines ---------------------------------------------------------------------------------


def _chat(prefix: str, n: int, model=None, words: int = 5) -> list[dict]:
    records = []
    for i in range(n):
        record = {
            "id": f"{prefix}_{i}",
            "messages": [
                {"role": "user", "content": f"question {prefix} {i}"},
                {"role": "assistant", "content": " ".join([f"{prefix}{i}"] * (words + i % 7))},
            ],
        }
        if model is not None:
            record["model"] = model(i) if callable(model) else model
        records.append(record)
    return records


def _run(tmp_path: Path, name: str, agent: list[dict], general: list[dict], mix: dict, seed: int = 0):
    (tmp_path / f"{name}_agent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in agent))
    (tmp_path / f"{name}_general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in general))
    steps = [
        {
            "id": "read_agent",
            "type": "read",
            "config": {"format": "openai", "source": "agent", "paths": f"{name}_agent.jsonl"},
        },
        {
            "id": "read_general",
            "type": "read",
            "config": {"format": "openai", "source": "general", "paths": f"{name}_general.jsonl"},
        },
        {"id": "agent", "type": "to_chat", "inputs": ["read_agent"], "config": {"kind": "agent"}},
        {"id": "general", "type": "to_chat", "inputs": ["read_general"], "config": {"kind": "general"}},
        {"id": "mix", "type": "mix", "inputs": ["agent", "general"], "config": mix},
        {"id": "write", "type": "write", "inputs": ["mix"]},
    ]
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(json.dumps({"name": name, "seed": seed, "steps": steps}))
    out = tmp_path / f"{name}_out"
    manifest = run_spec(str(spec), str(out)).manifest
    codec = ArrowCodec(Sample)
    samples = []
    for shard in sorted(out.glob("data-*.arrow")):
        with pa.ipc.open_stream(str(shard)) as stream:
            samples += [codec.from_row(row) for row in stream.read_all().to_pylist()]
    return manifest, samples, out


def test_downsample_with_weights_and_unweighted_values(tmp_path):
    general = _chat("g", 100, model=lambda i: "gpt-4" if i < 30 else ("gpt-3.5" if i < 95 else None))
    mix = {
        "agent": ["agent"],
        "eta": 0.2,
        "weights": {"general": {"by": "metadata.model", "shares": {"gpt-4": 1, "gpt-3.5": 4}}},
    }
    manifest, samples, out = _run(tmp_path, "down", _chat("a", 40), general, mix)
    # gpt-3.5 (65) limits the general input to 65 / 0.8 = 81.25 -> gpt-4 16.25; agent 81.25 / 4 = 20.3
    kinds = Counter(s.kind for s in samples)
    assert kinds == {"agent": 20, "general": 81}
    models = Counter(s.metadata.get("model") for s in samples if s.kind == "general")
    assert models == {"gpt-3.5": 65, "gpt-4": 16}
    ledger = manifest.steps["mix"]
    assert ledger.in_ == 140
    assert ledger.filtered == {"downsampled": 20 + 14, "no_weight": 5}
    assert ledger.passed == ledger.emitted == 101
    ratios = manifest.ratios["mix"]
    assert ratios["target_eta"] == 0.2
    assert ratios["achieved_eta"] == pytest.approx(20 / 101, abs=1e-6)
    assert abs(ratios["achieved_eta"] - 0.2) < 0.01
    assert ratios["groups"]["general[gpt-4]"]["target_share_of_side"] == pytest.approx(0.2)
    assert ratios["groups"]["general[gpt-4]"]["achieved_share_of_side"] == pytest.approx(16 / 81, abs=1e-6)
    assert ratios["groups"]["general[(none)]"]["target"] == 0
    assert all(not s.id.startswith("rep") and "repeat_of" not in s.metadata for s in samples)
    rejected = [json.loads(line) for line in (out / "rejected" / "mix.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in rejected) == {"downsampled": 34, "no_weight": 5}
    # Draw losers are accounted for by id, without a copy of their content; others keep it.
    downsampled = [r for r in rejected if r["reason"] == "downsampled"]
    assert all(r["record_id"] and r["payload"] == "" for r in downsampled)
    assert all(json.loads(r["payload"])["id"] == r["record_id"] for r in rejected if r["reason"] == "no_weight")


def test_upsample_repeats_deterministically(tmp_path):
    mix = {"agent": ["agent"], "eta": 0.5, "strategy": "upsample"}
    manifest, samples, _ = _run(tmp_path, "up", _chat("a", 4), _chat("g", 10), mix)
    agent = [s for s in samples if s.kind == "agent"]
    assert len(agent) == 10 and len([s for s in samples if s.kind == "general"]) == 10
    assert len({s.id for s in samples}) == 20
    copies = [s for s in agent if "repeat_of" in s.metadata]
    assert len(copies) == 6
    originals = {s.id for s in agent if "repeat_of" not in s.metadata}
    assert len(originals) == 4 and {c.metadata["repeat_of"] for c in copies} <= originals
    assert Counter(c.metadata["repeat_of"] for c in copies).most_common(1)[0][1] == 2  # 10 = 4 * 2 + 2
    assert all(c.lineage.derivation.startswith("to_chat+repeat") and c.lineage.steps[-1] == "mix" for c in copies)
    assert manifest.ratios["mix"]["repeats"] == 6 and manifest.ratios["mix"]["achieved_eta"] == 0.5
    assert manifest.steps["mix"].passed == 14 and manifest.steps["mix"].emitted == 20


def test_keep_agent_keeps_every_agent_sample_and_reports_repeats(tmp_path):
    general = _chat("g", 30, model=lambda i: "gpt-4" if i < 8 else None, words=20)
    mix = {
        "agent": ["agent"],
        "eta": 0.2,
        "strategy": "keep_agent",
        "max_copies": 10,
        "weights": {"general": {"by": "metadata.model", "shares": {"gpt-4": 1}, "other": 4}},
    }
    manifest, samples, _ = _run(tmp_path, "keep", _chat("a", 25), general, mix)
    agent = [s for s in samples if s.kind == "agent"]
    general_out = [s for s in samples if s.kind == "general"]
    # every agent sample exactly once; general = 4 x 25 = 100, gpt-4 : other = 20 : 80
    assert sorted(s.lineage.source_id for s in agent) == sorted(f"a_{i}" for i in range(25))
    assert all("repeat_of" not in s.metadata for s in agent)
    assert len(general_out) == 100
    assert Counter(s.metadata.get("model") for s in general_out) == {"gpt-4": 20, None: 80}
    # copies: distinct stable ids, lineage and a pointer to the original; at most max_copies each
    assert len({s.id for s in samples}) == len(samples) == 125
    copies = [s for s in general_out if "repeat_of" in s.metadata]
    assert len(copies) == 100 - 30
    originals = {s.id: s for s in general_out if "repeat_of" not in s.metadata}
    assert len(originals) == 30
    assert all(c.metadata["repeat_of"] in originals for c in copies)
    assert all(c.lineage.steps[-1] == "mix" and "+repeat" in c.lineage.derivation for c in copies)
    assert all(c.messages == originals[c.metadata["repeat_of"]].messages for c in copies)
    assert max(Counter(c.metadata["repeat_of"] for c in copies).values()) + 1 <= 10
    ratios = manifest.ratios["mix"]
    assert ratios["strategy"] == "keep_agent" and ratios["capped"] is False and ratios["max_copies"] == 10
    assert ratios["achieved_eta"] == 0.2 and ratios["achieved_eta_by"]["samples"] == 0.2
    supervised = Counter()
    for s in samples:
        supervised[s.kind] += s.counts.supervised_tokens
    assert ratios["achieved_eta_by"]["supervised_tokens"] == pytest.approx(
        supervised["agent"] / sum(supervised.values()), abs=1e-6
    )
    sides = ratios["sides"]
    assert sides["agent"]["kept_samples"] == sides["agent"]["available_samples"] == 25
    assert sides["agent"]["kept_share"] == 1.0 and sides["agent"]["repeats"] == 0
    assert sides["general"]["kept_samples"] == 30 and sides["general"]["repeats"] == 70
    assert sides["general"]["out_samples"] == 100 and sides["general"]["out_supervised_tokens"] == supervised["general"]
    gpt4, other = ratios["groups"]["general[gpt-4]"], ratios["groups"]["general[(none)]"]
    assert (gpt4["out_samples"], gpt4["repeats"], other["out_samples"], other["repeats"]) == (20, 12, 80, 58)
    assert gpt4["share_of_side_by"]["samples"] == 0.2
    assert ratios["repeats"] == 70
    assert manifest.steps["mix"].passed == 55 and manifest.steps["mix"].emitted == 125
    # deterministic: the same run gives the same ids
    _, again, _ = _run(tmp_path, "keep2", _chat("a", 25), general, mix)
    assert sorted(s.id for s in again) == sorted(s.id for s in samples)


def test_selection_does_not_depend_on_input_order(tmp_path):
    mix = {"agent": ["agent"], "eta": 0.2}
    agent, general = _chat("a", 30), _chat("g", 40)
    _, first, _ = _run(tmp_path, "s0", agent, general, mix)
    _, reordered, _ = _run(tmp_path, "s0r", list(reversed(agent)), list(reversed(general)), mix)
    assert sorted(s.lineage.source_id for s in first) == sorted(s.lineage.source_id for s in reordered)
    assert len(first) == 50


def test_selection_depends_on_seed_and_step():
    plan = GroupPlan(input="a", value="*", side="agent", available=100, share=1.0, target=30.0)

    def chosen(seed: int, step: str) -> set[str]:
        ranked = [(rank_key(seed, step, f"s{i}"), 1) for i in range(100)]
        decision = decide_group(plan, ranked)
        return {key[1] for key, _ in ranked if key <= decision.threshold}

    assert len(chosen(0, "mix")) == len(chosen(1, "mix")) == len(chosen(0, "mix2")) == 30
    assert chosen(0, "mix") == chosen(0, "mix")
    assert chosen(0, "mix") != chosen(1, "mix")
    assert chosen(0, "mix") != chosen(0, "mix2")


def test_unknown_input_names_are_errors(tmp_path):
    from pipelines.errors import SpecError

    with pytest.raises(SpecError, match="not among the inputs of this step"):
        _run(tmp_path, "bad", _chat("a", 3), _chat("g", 3), {"agent": ["agents"]})


def test_check_inputs_validates_names_before_the_run():
    with pytest.raises(ValueError, match="'agents' not among the inputs"):
        Mix.check_inputs(MixConfig(agent=["agents"]), ["agent", "general"])
    with pytest.raises(ValueError, match="at least one general input"):
        Mix.check_inputs(MixConfig(agent=["agent"]), ["agent"])
    Mix.check_inputs(MixConfig(agent=["agent"]), ["agent", "general"])


@pytest.mark.real_data
@pytest.mark.slow
def test_token_eta_on_real_data(tmp_path, external):
    agentinstruct = external("agentinstruct_thudm")
    arena = external("arena_hard_auto", "data", "arena-hard-v0.1", "model_answer", "gpt-4-0314.jsonl")
    alpaca = external("llamafactory_general_demos", "alpaca_en_demo.json")
    steps = [
        {
            "id": "read_agent",
            "type": "read",
            "config": {"format": "agentinstruct", "paths": str(agentinstruct / "*.parquet")},
        },
        {"id": "read_arena", "type": "read", "config": {"format": "openai", "paths": str(arena)}},
        {
            "id": "read_alpaca",
            "type": "read",
            "config": {
                "format": "jsonl",
                "paths": str(alpaca),
                "mapping": {"prompt": ["instruction", "input"], "response": "output"},
            },
        },
        {"id": "agent", "type": "to_chat", "inputs": ["read_agent"], "config": {"kind": "agent"}},
        {"id": "general", "type": "to_chat", "inputs": ["read_arena", "read_alpaca"], "config": {"kind": "general"}},
        {
            "id": "mix",
            "type": "mix",
            "inputs": ["agent", "general"],
            "config": {"agent": ["agent"], "eta": 0.2, "unit": "supervised_tokens"},
        },
        {"id": "write", "type": "write", "inputs": ["mix"]},
    ]
    spec = tmp_path / "tokens.yaml"
    # the audit's findings on unconverted agent data are beside the point here
    spec.write_text(json.dumps({"name": "tokens", "steps": steps, "audit": {"enabled": False}}))
    out = tmp_path / "out"
    manifest = run_spec(str(spec), str(out)).manifest
    codec = ArrowCodec(Sample)
    supervised = Counter()
    for shard in sorted(out.glob("data-*.arrow")):
        with pa.ipc.open_stream(str(shard)) as stream:
            for row in stream.read_all().to_pylist():
                s = codec.from_row(row)
                supervised[s.kind] += s.counts.supervised_tokens
    achieved = supervised["agent"] / (supervised["agent"] + supervised["general"])
    assert abs(achieved - 0.2) < 0.01
    assert manifest.ratios["mix"]["achieved_eta"] == pytest.approx(achieved, abs=1e-6)
    assert manifest.ratios["mix"]["unit"] == "supervised_tokens"
    # the agent side was the abundant one (AgentInstruct trajectories are long) and was cut
    assert manifest.steps["mix"].filtered["downsampled"] > 0
