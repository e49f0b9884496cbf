"""Step discovery: every built-in is listed without importing it; a spec imports only its steps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.registry import UnknownStepType, builtin_steps, resolve_step_type
from tests.conftest import REPO
from transforms.base import Step

EXPECTED = {
    "read",
    "to_chat",
    "write",
    "clean_outputs",
    "align",
    "instruction_pairs",
    "tag_capabilities",
    "balance",
    "negatives",
    "reward_filter",
    "score",
    "mix",
    "dedup",
    "dedup_trajectories",
    "decontaminate",
    "audit",
    "identity_filter",
    "check_calls",
    "trim_closings",
}


def test_every_builtin_step_is_found_and_resolves_to_its_class():
    steps = builtin_steps()
    assert set(steps) == EXPECTED
    for name in steps:
        cls = resolve_step_type(name)
        assert issubclass(cls, Step) and cls.type_name == name


def test_dotted_paths_and_unknown_names():
    assert resolve_step_type("transforms.to_chat:ToChat").type_name == "to_chat"
    with pytest.raises(UnknownStepType, match="known: align"):
        resolve_step_type("nope")
    with pytest.raises(UnknownStepType, match="cannot import"):
        resolve_step_type("no_such_package.mod:Step")


def test_listing_steps_imports_none_of_them():
    code = (
        "import sys; from pipelines.registry import builtin_steps, resolve_step_type; builtin_steps(); "
        "resolve_step_type('read'); print('transforms.score' in sys.modules, 'apache_beam.ml' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_entry_points_add_steps_but_never_replace_a_builtin_and_builtins_do_not_read_them(monkeypatch):
    from importlib.metadata import EntryPoint

    from pipelines import registry

    calls = []
    plugins = [
        EntryPoint("my_chat", "transforms.to_chat:ToChat", registry.ENTRY_POINT_GROUP),
        EntryPoint("read", "transforms.write:Write", registry.ENTRY_POINT_GROUP),
    ]

    def entry_points(group):
        calls.append(group)
        return [ep for ep in plugins if ep.group == group]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    assert resolve_step_type("read").type_name == "read" and not calls  # a built-in: no entry points read
    assert resolve_step_type("my_chat").type_name == "to_chat" and calls == [registry.ENTRY_POINT_GROUP]
    assert registry.available_steps()["read"] == builtin_steps()["read"]
    with pytest.raises(UnknownStepType, match="my_chat"):
        resolve_step_type("nope")
