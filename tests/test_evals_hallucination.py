"""The hallucination metric on hand-made answers with known scores, and the eval command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evals.hallucination import Keywords, items_from_dir, score
from tests.conftest import REPO
from tests.helpers import run

RESPONSES = [
    # plain-text cases: 4 items
    ("no_tools", "I can't look that up without tools.", None),  # clean
    ("no_tools", "Thought: I should search.\nAction: search[x]", None),  # ReAct
    ("irrelevant_tools", "I will use the weather tool to help.", None),  # general phrase
    ("general_with_tools", "Thought: hmm. I need to call get_weather.", None),  # both
    # positive case: 2 items
    ("positive", "I'll call get_weather now.", "get_weather"),
    ("positive", "It is sunny.", "get_weather"),
]


def test_scores_match_hand_computed_values():
    result = score(RESPONSES)
    assert result["n_plain_text"] == 4
    assert result["h_react"] == 0.5  # items 2 and 4
    assert result["h_general"] == 0.5  # items 3 and 4 ("I need to call")
    assert result["hscore"] == 0.5  # ((1 - 0.5) + (1 - 0.5)) / 2
    assert result["positive_correct_call"] == 0.5 and result["n_positive"] == 2
    assert result["cases"]["no_tools"] == {"n": 2, "h_react": 0.5, "h_general": 0.0}
    assert result["cases"]["general_with_tools"] == {"n": 1, "h_react": 1.0, "h_general": 1.0}


def test_keywords_are_configurable():
    result = score(RESPONSES, Keywords(react_keywords=["Action:"], general_phrases=["weather tool"]))
    assert result["h_react"] == 0.25 and result["h_general"] == 0.25 and result["hscore"] == 0.75


def agentmill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_eval_command_scores_a_responses_file(tmp_path):
    responses = tmp_path / "answers.jsonl"
    responses.write_text(
        "".join(json.dumps({"case": c, "response": r, "expected_tool": e}) + "\n" for c, r, e in RESPONSES)
    )
    out = tmp_path / "report.json"
    result = agentmill("eval", "hallucination", "--responses", str(responses), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "HScore 0.5" in result.stdout
    assert json.loads(out.read_text())["hscore"] == 0.5


def test_eval_command_errors_are_clear(tmp_path):
    assert "give --model" in agentmill("eval", "hallucination").stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"response": 1}\n')
    result = agentmill("eval", "hallucination", "--responses", str(bad), "--output", str(tmp_path / "r.json"))
    assert result.returncode == 2 and "string 'response'" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    run(REPO / "pipelines" / "demo.yaml", out)
    return out


def test_items_cover_the_cases_of_a_pipeline_output(demo_out):
    items = items_from_dir(str(demo_out))
    cases = {item.case for item in items}
    assert {"no_tools", "irrelevant_tools", "general_with_tools", "no_tools_normal_query", "positive"} <= cases
    positives = [i for i in items if i.case == "positive"]
    assert all(i.expected_tool and i.prompt[-1].role.value == "user" for i in positives)


def test_responses_joined_by_id_with_the_data(demo_out, tmp_path):
    items = items_from_dir(str(demo_out))
    lines = [{"id": i.id, "response": "Action: x" if i.case != "positive" else f"use {i.expected_tool}"} for i in items]
    responses = tmp_path / "r.jsonl"
    responses.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "report.json"
    result = agentmill(
        "eval", "hallucination", "--data", str(demo_out), "--responses", str(responses), "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["h_react"] == 1.0 and report["positive_correct_call"] == 1.0


@pytest.mark.slow
def test_eval_command_generates_with_a_local_model(demo_out, tmp_path):
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    out = tmp_path / "report.json"
    result = agentmill(
        "eval",
        "hallucination",
        "--model",
        str(model),
        "--data",
        str(demo_out),
        "--per-case",
        "2",
        "--max-new-tokens",
        "6",
        "--output",
        str(out),
        "--save-responses",
        str(tmp_path / "gen.jsonl"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert 0.0 <= report["hscore"] <= 1.0 and report["n_positive"] >= 1
    assert sum(c["n"] for c in report["cases"].values()) == len((tmp_path / "gen.jsonl").read_text().splitlines())
