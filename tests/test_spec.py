"""Spec validation: every miswiring is reported with the spec file and the step id."""

from __future__ import annotations

import pytest

from pipelines.errors import SpecError
from pipelines.graph import load_plan, mermaid
from tests.conftest import DEMO_DATA
from tests.helpers import write_spec

DATA = str(DEMO_DATA / "agentinstruct_sample.jsonl")
READ = {"id": "read", "type": "read", "config": {"format": "agentinstruct", "paths": DATA}}
CHAT = {"id": "chat", "type": "to_chat", "inputs": ["read"]}
WRITE = {"id": "write", "type": "write", "inputs": ["chat"]}


def plan_error(tmp_path, steps=None, text=None) -> SpecError:
    if text is not None:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
    else:
        path = write_spec(tmp_path, steps, name="spec")
    with pytest.raises(SpecError) as info:
        load_plan(str(path))
    assert str(path) in str(info.value)
    # the path holds the test's name: take it out so assertions only see the message
    info.value.args = (str(info.value).replace(str(path), "SPEC"),)
    return info.value


def test_valid_spec_plans_in_topological_order(tmp_path):
    plan = load_plan(str(write_spec(tmp_path, [WRITE, CHAT, READ])))
    assert [s.id for s in plan.steps] == ["read", "chat", "write"]
    assert "read --> chat" in mermaid(plan)


def test_unknown_top_level_and_step_keys(tmp_path):
    assert "unknown key 'colour'" in str(plan_error(tmp_path, text="name: x\ncolour: red\nsteps: []\n"))
    error = plan_error(tmp_path, [READ, dict(CHAT, colour="red"), WRITE])
    assert error.step_id == "chat" and "unknown key 'colour'" in str(error)


def test_unknown_config_key_names_the_step(tmp_path):
    error = plan_error(tmp_path, [READ, dict(CHAT, config={"kindd": "agent"}), WRITE])
    assert error.step_id == "chat" and "kindd" in str(error)


def test_unknown_type_lists_known_types(tmp_path):
    error = plan_error(tmp_path, [READ, dict(CHAT, type="to_chatt"), WRITE])
    assert error.step_id == "chat" and "to_chat" in str(error) and "unknown step type" in str(error)


def test_dotted_path_that_is_not_a_step(tmp_path):
    error = plan_error(tmp_path, [READ, dict(CHAT, type="json:dumps"), WRITE])
    assert "not a transforms.base.Step subclass" in str(error)


def test_missing_and_unknown_inputs(tmp_path):
    assert "missing 'inputs'" in str(plan_error(tmp_path, [READ, dict(CHAT, inputs=[]), WRITE]))
    error = plan_error(tmp_path, [READ, dict(CHAT, inputs=["raed"]), WRITE])
    assert error.step_id == "chat" and "'raed' is not a step" in str(error)
    assert "no output port 'pool'" in str(plan_error(tmp_path, [READ, dict(CHAT, inputs=["read.pool"]), WRITE]))


def test_cycle_is_reported(tmp_path):
    a = {"id": "a", "type": "tag_capabilities", "inputs": ["chat", "b"]}
    b = {"id": "b", "type": "tag_capabilities", "inputs": ["a"]}
    error = plan_error(tmp_path, [READ, CHAT, a, b, dict(WRITE, inputs=["a"])])
    assert "the steps form a cycle: a -> b -> a" in str(error) or "b -> a -> b" in str(error)
    assert "write" not in str(error).split("cycle:")[1]  # only the steps on the cycle are named
    assert "dangling" not in str(error)


def test_type_mismatch_between_connected_steps(tmp_path):
    error = plan_error(tmp_path, [READ, CHAT, dict(WRITE, inputs=["read"])])
    assert error.step_id == "write" and "expects Sample records" in str(error) and "gives Trajectory" in str(error)


def test_exactly_one_write_and_no_dangling_outputs(tmp_path):
    assert "exactly one 'write'" in str(plan_error(tmp_path, [READ, CHAT]))
    dangling = {"id": "chat2", "type": "to_chat", "inputs": ["read"]}
    error = plan_error(tmp_path, [READ, CHAT, dangling, WRITE])
    assert error.step_id == "chat2" and "not used" in str(error)


def test_duplicate_ids_and_duplicate_yaml_keys(tmp_path):
    assert "duplicate step id" in str(plan_error(tmp_path, [READ, READ, CHAT, WRITE]))
    assert "duplicate key 'name'" in str(plan_error(tmp_path, text="name: a\nname: b\nsteps: []\n"))


def test_invalid_yaml_and_missing_file(tmp_path):
    assert "invalid YAML" in str(plan_error(tmp_path, text="name: [unclosed\n"))
    assert "a spec must be a mapping" in str(plan_error(tmp_path, text="- just a list\n"))
    with pytest.raises(SpecError, match="cannot read spec"):
        load_plan(str(tmp_path / "absent.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    text = "name: !!python/object/apply:os.system ['echo pwned']\nsteps: []\n"
    assert "invalid YAML" in str(plan_error(tmp_path, text=text))
