"""negatives: the cases, the irrelevance rule, exact counts, responders, on real and demo data."""

from __future__ import annotations

import glob

import datasets
import pytest

from schemas import Role, ToolSpec
from tests.conftest import DEMO_DATA, REPO
from tests.helpers import parse_file, rejected, run, write_spec
from transforms.base import Filtered, Stat, StepContext
from transforms.negatives import (
    NegativeMaker,
    Negatives,
    NegativesConfig,
    content_words,
    eligibility,
    pick_irrelevant_tools,
    query_index,
)
from transforms.react import has_markers

WEATHER = ToolSpec(name="get_weather", description="Get the current weather of a city")
CURRENCY = ToolSpec(name="convert_currency", description="Convert an amount between currencies")
FORECAST = ToolSpec(name="weather_forecast", description="Five-day forecast")
BOOKS = ToolSpec(name="search_books", description="Search a library catalogue by title or author")


def test_content_words_split_identifiers_and_drop_stop_words():
    assert content_words("getWeatherForecast for the cities") == {"weather", "forecast", "citie"}
    assert "with" not in content_words("with")


def test_irrelevant_tools_never_reuse_source_names_or_share_words():
    pool = [WEATHER, CURRENCY, FORECAST, BOOKS]
    picked = pick_irrelevant_tools("What is the weather in Oslo?", [WEATHER], pool, 5, 0, "neg", "k")
    names = {t.name for t in picked}
    assert "get_weather" not in names and "weather_forecast" not in names  # name, then shared word 'weather'
    assert names == {"convert_currency", "search_books"}
    assert picked == pick_irrelevant_tools("What is the weather in Oslo?", [WEATHER], pool, 5, 0, "neg", "k")
    assert len(pick_irrelevant_tools("What is the weather in Oslo?", [WEATHER], pool, 1, 0, "neg", "k")) == 1


def test_quotas_split_count_exactly():
    config = NegativesConfig(
        agent_inputs=["a"],
        general_inputs=["g"],
        count=761,
        shares={"no_tools": 0.4, "irrelevant_tools": 0.4, "general_with_tools": 0.2},
    )
    assert sum(config.quotas().values()) == 761
    assert NegativesConfig(agent_inputs=["a"]).quotas() == {"irrelevant_tools": 381, "no_tools": 380}
    with pytest.raises(ValueError, match="sum to 1"):
        NegativesConfig(agent_inputs=["a"], shares={"no_tools": 0.7})
    with pytest.raises(ValueError, match="general_inputs"):
        NegativesConfig(agent_inputs=["a"], shares={"no_tools": 0.5, "general_with_tools": 0.5})
    with pytest.raises(ValueError, match="model"):
        NegativesConfig(agent_inputs=["a"], responder="model")


def maker(**config) -> NegativeMaker:
    config.setdefault("agent_inputs", ["a"])
    step = Negatives(config, StepContext(step_id="negatives"))
    return NegativeMaker(step.config, step.context, *step.books())


@pytest.mark.real_data
def test_cases_from_real_glaive_toolbench_and_general_chat(external):
    glaive = []
    for path in sorted(glob.glob(str(external("llamafactory_glaive_toolcall") / "*.json"))):
        glaive += parse_file(path, "sharegpt")[0]
    toolbench = []
    for path in sorted(glob.glob(str(external("toolbench_openbmb", "data_example", "answer") / "*" / "*.json"))):
        toolbench += parse_file(
            path,
            "openai",
            messages_field="answer_generation.train_messages.-1",
            tools_field="answer_generation.function",
        )[0]
    general = parse_file(
        external("arena_hard_auto", "data", "arena-hard-v0.1", "model_answer", "gpt-4-0314.jsonl"), "openai"
    )[0]
    pool = sorted({t.name: t for traj in glaive + toolbench for t in traj.tools}.values(), key=lambda t: t.name)
    pool_json = [t.model_dump() for t in pool]
    fn = maker(general_inputs=["g"], shares={"no_tools": 0.4, "irrelevant_tools": 0.4, "general_with_tools": 0.2})

    agent = [t for t in glaive + toolbench if eligibility("agent", t, "template") is None]
    assert len(agent) > 100
    for traj in agent[:150]:
        for case in ("no_tools", "irrelevant_tools"):
            sample = fn.build(case, traj, fn._tools(pool_json))
            query = traj.turns[query_index(traj)].text
            assert [m.role for m in sample.messages][-2:] == [Role.USER, Role.ASSISTANT]
            assert sample.messages[-2].content == query and sample.messages[-1].loss
            assert not has_markers(sample.messages[-1].content)
            assert (
                sample.kind == "negative" and sample.metadata["case"] == case == sample.lineage.derivation.split(":")[1]
            )
            if case == "no_tools":
                assert sample.tools == [] and sample.messages[0].role is Role.USER
            else:
                source_names = {t.name for t in traj.tools}
                assert sample.tools and not source_names & {t.name for t in sample.tools}
                assert sample.messages[0].role is Role.SYSTEM
                assert all(t.name in sample.messages[0].content for t in sample.tools)
                assert all(t.name in sample.messages[-1].content for t in sample.tools)  # template names them

    chats = [t for t in general if eligibility("general", t, "template") is None]
    assert len(chats) == 500
    for traj in chats[:50]:
        sample = fn.build("general_with_tools", traj, fn._tools(pool_json))
        assert sample.tools and sample.messages[0].role is Role.SYSTEM
        assert [m.content for m in sample.messages[1:]] == [t.text for t in traj.turns]  # the real answer is kept
        assert not (
            content_words(traj.turns[0].text)
            & set().union(*(content_words(f"{t.name} {t.description}") for t in sample.tools))
        )


@pytest.mark.real_data
def test_dataset_responder_uses_the_real_plain_answer(external):
    glaive = []
    for path in sorted(glob.glob(str(external("llamafactory_glaive_toolcall") / "*.json"))):
        glaive += parse_file(path, "sharegpt")[0]
    fn = maker(responder="dataset")
    declines = [t for t in glaive if eligibility("agent", t, "dataset") is None]
    assert declines  # glaive has requests its tools cannot serve
    traj = declines[0]
    sample = fn.build("no_tools", traj, [])
    reply = next(t.text for t in traj.turns[query_index(traj) + 1 :] if t.role is Role.ASSISTANT)
    assert sample.messages[-1].content == reply


def test_not_selected_and_ineligible_inputs_are_filtered_with_reasons():
    trajs = parse_file(DEMO_DATA / "agentinstruct_sample.jsonl", "agentinstruct")[0]
    fn = maker()
    outcomes = [o for t in trajs for o in fn(("agent", t), selection={}, pool=[]) if not isinstance(o, Stat)]
    assert {o.reason for o in outcomes if isinstance(o, Filtered)} <= {"not_selected", "no_tool_call"}
    assert len(outcomes) == len(trajs)


def test_demo_pipeline_emits_every_case_exactly(tmp_path):
    summary = run(REPO / "pipelines" / "demo.yaml", tmp_path / "out")
    ratios = summary.manifest.ratios["negatives"]
    assert ratios["achieved"] == ratios["target"] == {"general_with_tools": 2, "irrelevant_tools": 2, "no_tools": 2}
    rows = [r for r in datasets.load_from_disk(str(tmp_path / "out")) if r["kind"] == "negative"]
    assert (
        sorted(r["lineage"]["derivation"] for r in rows)
        == ["negative:general_with_tools"] * 2 + ["negative:irrelevant_tools"] * 2 + ["negative:no_tools"] * 2
    )
    assert all(m["capability"] == "general" for r in rows for m in r["messages"] if m["role"] == "assistant")
    dropped = rejected(tmp_path / "out", "negatives")
    assert dropped and all(d["record_id"] for d in dropped)
    # Ineligible trajectories keep their JSON for inspection; quota losers are accounted by id only.
    assert all(d["payload"].startswith("{") for d in dropped if d["reason"] != "not_selected")
    assert all(d["payload"] == "" for d in dropped if d["reason"] == "not_selected")
    assert {d["reason"] for d in dropped} >= {"not_selected", "no_tool_call"}


def test_input_names_are_checked_before_running(tmp_path):
    from pipelines.errors import SpecError
    from pipelines.graph import load_plan

    steps = [
        {
            "id": "a",
            "type": "read",
            "config": {"format": "agentinstruct", "paths": str(DEMO_DATA / "agentinstruct_sample.jsonl")},
        },
        {"id": "neg", "type": "negatives", "inputs": ["a"], "config": {"agent_inputs": ["b"]}},
        {"id": "write", "type": "write", "inputs": ["neg"]},
    ]
    with pytest.raises(SpecError, match="not inputs of this step") as info:
        load_plan(str(write_spec(tmp_path, steps)))
    assert info.value.step_id == "neg"


@pytest.mark.slow
def test_model_responder_runs_a_local_model_through_run_inference(tmp_path):
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    steps = [
        {
            "id": "agent",
            "type": "read",
            "config": {"format": "sharegpt", "paths": str(DEMO_DATA / "glaive_sample.json")},
        },
        {
            "id": "more",
            "type": "read",
            "config": {"format": "openai", "paths": str(DEMO_DATA / "toolbench_sample.jsonl")},
        },
        {
            "id": "neg",
            "type": "negatives",
            "inputs": ["agent", "more"],
            "config": {
                "agent_inputs": ["agent", "more"],
                "count": 2,
                "responder": "model",
                "model": str(model),
                "max_new_tokens": 8,
            },
        },
        {"id": "write", "type": "write", "inputs": ["neg"]},
    ]
    spec = write_spec(tmp_path, steps)
    first = run(spec, tmp_path / "out")
    assert first.manifest.ratios["neg"]["achieved"] == {"irrelevant_tools": 1, "no_tools": 1}
    assert not first.manifest.steps["neg"].dead_letter
    rows = list(datasets.load_from_disk(str(tmp_path / "out")))
    assert len(rows) == 2 and all(r["messages"][-1]["content"] for r in rows)  # generated text filled in
    assert all(r["metadata"] and '"responder":"model"' in r["metadata"] for r in rows)
    second = run(spec, tmp_path / "again")
    assert [s.sha256 for s in first.manifest.output.shards] == [s.sha256 for s in second.manifest.output.shards]
