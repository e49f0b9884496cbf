"""pipelines/function_calling.yaml on the real data: native calls, every one declared and
schema-valid, every tool result linked, no-call negatives; the audit passes its tool checks."""

from __future__ import annotations

from collections import Counter

import pytest

from pipelines.auditing import samples_of_shards, shard_files
from schemas import Role
from tests.conftest import REPO
from tests.helpers import courtesy_replies, run_recipe
from transforms.react import has_markers
from transforms.tool_cards import validate_call

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
SPEC = REPO / "pipelines" / "function_calling.yaml"


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    out, summary = run_recipe(SPEC, tmp_path_factory, "fc", needs="llamafactory_glaive_toolcall")
    return summary, list(samples_of_shards(shard_files(str(out))))


def test_the_audit_finds_no_undeclared_tool_and_no_schema_failure(native):
    summary, _ = native
    checks = summary.manifest.audit.checks
    for name in ("undeclared_tool", "argument_schema"):
        assert checks[name].count == 0 and checks[name].total > 1500, name


def test_every_call_is_declared_valid_and_answered_by_a_linked_result(native):
    _, samples = native
    calls = Counter()
    parallel = 0
    for sample in samples:
        ids = {}
        for message in sample.messages:
            for call in message.tool_calls:
                validate_call(call, sample.tools)
                assert call.id and call.id not in ids
                ids[call.id] = call.name
            parallel += len(message.tool_calls) > 1
            if message.role is Role.TOOL:
                assert ids.get(message.tool_call_id) == message.name, sample.id
            if message.role is Role.ASSISTANT:
                assert not has_markers(message.content) or sample.lineage.source == "toolbench", sample.id
            calls[sample.lineage.source] += len(message.tool_calls)
        if sample.kind == "negative":
            assert not ids  # a negative never calls
    assert +calls == {"agentinstruct": 8011, "glaive": 267, "reason_tool_use": 66, "toolbench": 16}
    assert parallel == 12  # reason_tool_use's parallel calls stay in one message


def test_sources_and_negatives(native):
    summary, samples = native
    by = Counter((s.lineage.source, s.kind) for s in samples)
    assert by == {
        ("agentinstruct", "agent"): 1380,
        ("glaive", "agent"): 381,  # 58 copies of other conversations kept once
        ("reason_tool_use", "agent"): 49,
        ("toolbench", "agent"): 4,
        ("glaive", "negative"): 110,
        ("arena_hard", "negative"): 69,
        ("toolbench", "negative"): 5,
    }
    steps = summary.manifest.steps
    assert steps["check_calls"].filtered == {
        "invalid_arguments": 5,
        "undeclared_tool": 1,
        "unlinked_tool_result": 2,
        # glaive's translated addresses ("老板@公司.com" for boss@company.com), 3 made-up dates
        "ungrounded_argument": 8,
    }
    assert steps["unique_glaive"].filtered == {"duplicate": 58}
    # glaive's "Thank you!" / "You're welcome! If you have any other questions, ..." endings cut
    assert summary.manifest.ratios["closed_glaive"]["changed"] == 57
    assert not courtesy_replies(samples)
    assert summary.manifest.audit.checks["repeated_response"].status == "pass"
    misquoted = summary.manifest.audit.checks["misquoted_result"]
    assert misquoted.status == "pass" and misquoted.total > 700  # clean_agent's misquoted_result
    # reason_tool_use's reasoning parts are not kept, so no prompt demands reasoning
    reason = [s for s in samples if s.lineage.source == "reason_tool_use"]
    assert reason and all("must reason" not in s.messages[0].content for s in reason)
    assert steps["native"].filtered == {"invalid_arguments": 1, "undeclared_tool": 5, "ungrounded_argument": 3}
    # 3 DB episodes whose only output claims an INSERT it never runs, 1 glaive conversation whose
    # only supervised reply is Python that lost its indentation
    assert steps["clean_agent"].filtered == {"no_supervised_turn_left": 4}
    assert steps["clean_agent"].stats["masked:collapsed_code"] == 6
    assert steps["clean_agent"].stats["masked:wrong_language"] == 10
    # glaive's zh answers quoting what the tool never returned, a DB answer quoting a made-up
    # "Record inserted successfully.", a wrong string reversal of reason_tool_use
    assert steps["clean_agent"].stats["masked:misquoted_result"] == 23
    cases = Counter(s.metadata["case"] for s in samples if s.kind == "negative")
    assert cases == {"no_tools": 92, "irrelevant_tools": 92}
    # glaive's book, film and recipe lookups are neither refused nor answered with invented results
    assert steps["negatives"].filtered["knowledge_lookup"] == 38
    assert summary.manifest.ratios["negatives"]["achieved"] == summary.manifest.ratios["negatives"]["target"]
    assert all(s.tools for s in samples if s.kind == "negative" and s.metadata["case"] == "irrelevant_tools")
