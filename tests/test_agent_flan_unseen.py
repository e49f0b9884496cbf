"""The agent_flan recipe's steps on unseen trajectories and queries (bench/agent_flan_unseen.yaml):
issue 12's measured targets hold on data the recipe never reads, checked through the audit."""

from __future__ import annotations

import collections
import json

import datasets
import pytest

from pipelines.auditing import audit_path
from schemas import ArrowCodec, Role, Sample, Turn
from tests.conftest import REPO
from tests.helpers import run_recipe
from transforms.negatives import query_language
from transforms.react import parse_turn

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
SPEC = REPO / "bench" / "agent_flan_unseen.yaml"


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    out, summary = run_recipe(SPEC, tmp_path_factory, "unseen", needs="agentgym_sampled_trajectories_with_reward")
    report, failures = audit_path(str(out), None, "agent", None)
    assert not failures
    samples = [ArrowCodec(Sample).from_row(row) for row in datasets.load_from_disk(str(out)).to_list()]
    return summary, report, samples


def test_every_audit_target_of_the_issue_holds(unseen):
    _, report, samples = unseen
    checks = report.checks
    assert report.samples == len(samples)
    assert checks["decision_leak"].share <= 0.05
    assert checks["undeclared_tool"].count == 0 and checks["argument_schema"].count == 0
    assert checks["format_contradiction"].share <= 0.01
    assert checks["failed_episode"].count == 0
    assert checks["prompt_copy"].share <= 0.05
    assert checks["language_mismatch"].count == 0
    negatives = checks["repeated_response"].details["by_kind"]["negative"]
    assert negatives["top_share"] <= 0.02 and negatives["distinct_share"] >= 0.9


def test_agentgym_trajectories_give_pairs_and_their_targets_parse(unseen):
    summary, _, samples = unseen
    ledger = summary.manifest.steps["instruction_pairs"]
    assert "no_task" not in ledger.filtered and "failed_episode" not in ledger.filtered
    pairs = [s for s in samples if s.kind == "instruction"]
    by_source = collections.Counter((s.lineage.source, s.lineage.task) for s in pairs)
    assert by_source[("agentgym", "webshop")] > 0 and by_source[("agentgym", "babyai")] > 0
    assert by_source[("agenttraj_l", "babyai")] > 0 and by_source[("stabletoolbench", "toolbench")] > 0
    for sample in pairs:
        for message in (m for m in sample.messages if m.loss):
            if sample.metadata["format"] == "json":
                assert isinstance(json.loads(message.content), dict)
            else:
                assert len(parse_turn(Turn(role=Role.ASSISTANT, text=message.content))) == 1
    # the acknowledgement of the environment's prompt is never a target
    agent = [s for s in samples if s.kind == "agent" and s.lineage.source == "agentgym"]
    assert agent and not any(m.loss and m.content.strip().lower().startswith("ok") for s in agent for m in s.messages)


def test_negatives_on_unseen_queries_are_varied_and_in_the_query_language(unseen):
    summary, _, samples = unseen
    negatives = [s for s in samples if s.kind == "negative"]
    assert negatives and summary.manifest.steps["negatives"].emitted == len(negatives)
    assert not {s.lineage.task for s in negatives} & {"babyai", "webshop"}  # never environment observations
    answers = collections.Counter(s.messages[-1].content for s in negatives)
    assert answers.most_common(1)[0][1] / len(negatives) <= 0.02
    assert len(answers) / len(negatives) >= 0.9
    for sample in negatives:
        query = next(m for m in sample.messages if m.role is Role.USER).content
        language = query_language(query)
        if language is not None and sample.metadata["query"] == "needs_tool":
            assert query_language(sample.messages[-1].content) == language
    cases = collections.Counter((s.metadata["case"], s.metadata["query"]) for s in negatives)
    assert cases[("no_tools", "needs_tool")] and cases[("irrelevant_tools", "normal")]
