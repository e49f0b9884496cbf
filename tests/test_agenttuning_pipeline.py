"""pipelines/agenttuning.yaml on the real data: ledger, eta, sample shape, determinism across runners."""

from __future__ import annotations

from collections import Counter

import datasets
import pyarrow as pa
import pytest

from pipelines.graph import load_plan
from schemas import Role, Sample
from schemas.arrow import ArrowCodec
from tests.conftest import REPO
from tests.helpers import MULTI_PROCESS, PORTABLE, PORTABLE_PROCESS, run, shard_hashes
from transforms.dedup import DedupConfig, dedup_key

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
SPEC = REPO / "pipelines" / "agenttuning.yaml"
SYSTEM_PROMPT = "You are a helpful, respectful and honest assistant."


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """One run of the recipe with the default runner: (summary, output dir, samples)."""
    from tests.conftest import external_path

    external_path("agentinstruct_thudm")  # skip (or fail under CI) when the real data is absent
    out = tmp_path_factory.mktemp("agenttuning") / "out"
    summary = run(SPEC, out)
    codec = ArrowCodec(Sample)
    samples = []
    for shard in sorted(out.glob("data-*.arrow")):
        with pa.ipc.open_stream(str(shard)) as stream:
            samples += [codec.from_row(row) for row in stream.read_all().to_pylist()]
    return summary, out, samples


def test_spec_validates():
    plan = load_plan(str(SPEC))
    types = Counter(s.spec.type for s in plan.steps)
    assert types["reward_filter"] == 2 and types["dedup"] == 2 and types["decontaminate"] == 2
    assert types["mix"] == 1 and types["write"] == 1


def test_ledger_on_the_real_data(recipe):
    summary, _, samples = recipe
    steps = summary.manifest.steps
    assert {
        k: steps[k].in_ for k in ("read_agentinstruct", "read_agentgym", "read_arena", "read_alpaca", "read_sharegpt")
    } == {
        "read_agentinstruct": 1465,
        "read_agentgym": 685,
        "read_arena": 500,
        "read_alpaca": 999,
        "read_sharegpt": 500,
    }
    assert all(not ledger.dead_letter for ledger in steps.values())
    # the released AgentInstruct set passes as published
    assert steps["filter_agentinstruct"].passed == 1465
    # the AgentGym rollouts: the rule-by-rule expectation is computed independently in test_reward_filter
    agentgym = steps["filter_agentgym"]
    assert agentgym.passed == 176
    assert agentgym.filtered == {"below_threshold": 178, "invalid_action": 293, "repeated_output": 38}
    assert agentgym.ports == {"rejected": 685 - 176}
    assert steps["agent_chat"].in_ == 1465 + 176
    assert steps["mix"].in_ == steps["decontaminate_agent"].passed + steps["decontaminate_general"].passed
    assert steps["write"].passed == len(samples) == summary.manifest.output.num_rows


def test_eta_and_general_shares(recipe):
    summary, _, samples = recipe
    kinds = Counter(s.kind for s in samples)
    achieved = kinds["agent"] / len(samples)
    ratios = summary.manifest.ratios["mix"]
    assert ratios["target_eta"] == 0.2
    assert abs(achieved - 0.2) < 0.01
    assert ratios["achieved_eta"] == pytest.approx(achieved, abs=1e-6)
    general = [s for s in samples if s.kind == "general"]
    gpt4 = sum(1 for s in general if s.metadata.get("model") == "gpt-4-0314")
    assert abs(gpt4 / len(general) - 0.2) < 0.01  # GPT-4 : other = 1 : 4
    assert ratios["groups"]["decontaminate_general[gpt-4-0314]"]["target_share_of_side"] == pytest.approx(0.2)
    # both agent sources survive the down-sampling in proportion
    sources = Counter(s.lineage.source for s in samples if s.kind == "agent")
    assert set(sources) == {"agentinstruct", "agentgym"}
    assert sources["agentgym"] / kinds["agent"] == pytest.approx(176 / (1465 + 176 - 1), abs=0.05)


def test_samples_are_chat_shaped_unique_and_keep_loss_flags(recipe):
    _, _, samples = recipe
    assert all(s.messages[0].role is Role.SYSTEM and s.messages[0].content == SYSTEM_PROMPT for s in samples)
    assert all(any(m.loss for m in s.messages) for s in samples)
    keys = [dedup_key(s, DedupConfig()) for s in samples]
    assert len(set(keys)) == len(keys)
    assert len({s.id for s in samples}) == len(samples)
    agentinstruct = [s for s in samples if s.lineage.source == "agentinstruct"]
    # the 1-shot example's "OK." acknowledgement stays unsupervised (loss false), the agent's own turns supervised
    assert any(m.role is Role.ASSISTANT and not m.loss for s in agentinstruct for m in s.messages)
    assert all(s.lineage.steps == ["agent_chat"] for s in agentinstruct)


def test_output_loads_with_datasets(recipe):
    summary, out, samples = recipe
    dataset = datasets.load_from_disk(str(out))
    assert dataset.num_rows == summary.manifest.output.num_rows == len(samples)
    assert Counter(dataset["kind"]) == Counter(s.kind for s in samples)


@pytest.mark.parametrize(
    "beam_args",
    [MULTI_PROCESS, PORTABLE, PORTABLE_PROCESS],
    ids=["multi_processing", "portable_embed", "portable_process"],
)
def test_byte_identical_across_runners(recipe, tmp_path, beam_args):
    summary, out, _ = recipe
    other = run(SPEC, tmp_path / "out", beam_args)
    assert shard_hashes(tmp_path / "out") == shard_hashes(out)
    assert [s.sha256 for s in other.manifest.output.shards] == [s.sha256 for s in summary.manifest.output.shards]
    assert other.manifest.ratios == summary.manifest.ratios
    assert {k: v.model_dump() for k, v in other.manifest.steps.items()} == {
        k: v.model_dump() for k, v in summary.manifest.steps.items()
    }
    rejected = sorted(p.name for p in (out / "rejected").iterdir())
    assert rejected == sorted(p.name for p in (tmp_path / "out" / "rejected").iterdir())
    for name in rejected:
        assert (out / "rejected" / name).read_bytes() == (tmp_path / "out" / "rejected" / name).read_bytes()
