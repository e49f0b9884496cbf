"""Every reader on the real published data in ../shared/data/external."""

from __future__ import annotations

import glob
from collections import Counter

import pytest

from schemas import Role
from tests.conftest import AGENTINSTRUCT_SPLITS
from tests.helpers import parse_file

pytestmark = pytest.mark.real_data


def parse_all(pattern, fmt, **config):
    good, bad = [], []
    for path in sorted(glob.glob(str(pattern))):
        g, b = parse_file(path, fmt, **config)
        good += g
        bad += b
    return good, bad


def test_agentinstruct_all_splits(external):
    good, bad = parse_all(external("agentinstruct_thudm") / "*.parquet", "agentinstruct")
    assert not bad
    assert Counter(t.task for t in good) == AGENTINSTRUCT_SPLITS
    # the 1-shot example turns keep loss=false; human turns are never supervised
    assert all(not t.loss for traj in good for t in traj.turns if t.role.value == "user")
    # multi-turn splits open with an in-context example acknowledged by gpt with loss=false
    assert all(traj.turns[1].loss is False for traj in good if traj.task != "mind2web")
    assert len({t.id for t in good}) == 1465


def test_agentgym_agenttraj_l(external):
    good, bad = parse_all(external("agentgym_agenttraj_l") / "*.json", "agentinstruct")
    assert not bad and len(good) == 1399
    assert Counter(t.task for t in good) == {"babyai": 810, "lmrlgym_maze": 215, "textcraft": 374}


def test_agentgym_rollouts_with_reward_and_success(external):
    root = external("agentgym_sampled_trajectories_with_reward")
    good, bad = parse_all(root / "*.jsonl", "openai")
    more, bad2 = parse_all(root / "*" / "*.json", "openai")
    good += more
    assert not bad and not bad2 and len(good) == 685
    assert all(t.reward is not None and t.success is not None for t in good)
    assert Counter(t.task for t in good) == {"webshop": 105, "babyai": 206, "textcraft": 374}
    assert sum(t.success for t in good if t.task == "textcraft") == 350


def test_glaive_demos(external):
    good, bad = parse_all(external("llamafactory_glaive_toolcall") / "*.json", "sharegpt")
    assert not bad and len(good) == 454
    calls = [c for traj in good for t in traj.turns for c in t.tool_calls]
    assert calls and all(c.name and c.id for c in calls)
    results = [t for traj in good for t in traj.turns if t.role is Role.TOOL]
    linked = [t for t in results if t.tool_call_id]
    assert len(linked) == len(calls) and all(t.name for t in linked)
    # two Chinese conversations write their call as prose ("AI 计算折扣: {...}"): their results
    # answer no structured call, stay unlinked, and check_calls filters them (unlinked_tool_result)
    unlinked = [traj for traj in good for t in traj.turns if t.role is Role.TOOL and not t.tool_call_id]
    assert len(unlinked) == 2 and not any(t.tool_calls for traj in unlinked for t in traj.turns)
    assert sum(1 for traj in good if traj.tools) == 287  # the rest carry an empty tools list


@pytest.mark.parametrize(
    ("folder", "pattern", "fmt", "config", "count"),
    [
        ("fireact", "data/finetune/gpt_format/*.jsonl", "openai", {}, 2563),
        ("llamafactory_reason_tool_use", "*.jsonl", "openai", {}, 50),
        ("arena_hard_auto", "data/arena-hard-v0.1/model_answer/*.jsonl", "openai", {}, 500),
        ("fastchat", "data/dummy_conversation.json", "sharegpt", {}, 500),
        (
            "llamafactory_general_demos",
            "alpaca_en_demo.json",
            "jsonl",
            {"mapping": {"prompt": ["instruction", "input"], "response": "output"}},
            999,
        ),
        ("llamafactory_general_demos", "kto_en_demo.json", "openai", {}, 300),
    ],
)
def test_other_sources_parse_without_dead_letters(external, folder, pattern, fmt, config, count):
    good, bad = parse_all(external(folder) / pattern, fmt, **config)
    assert not bad
    assert len(good) == count
