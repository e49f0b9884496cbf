"""reward_filter: thresholds, missing rewards, the AgentTuning rules, and the real AgentGym rollouts."""

from __future__ import annotations

import glob
import json
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipelines.run import run_spec
from schemas import Role, Sample, Trajectory, Turn, trajectory_id
from schemas.arrow import ArrowCodec
from transforms.base import Filtered, RecordError, Stat
from transforms.choice_answers import choice_problem, choices_of
from transforms.read import ReadConfig, ReadFile
from transforms.reward_filter import (
    RewardFilter,
    RewardFilterConfig,
    RewardFilterFn,
    episode,
    judge,
    longest_repeat,
    thought_names,
)

AGENTGYM = "agentgym_sampled_trajectories_with_reward"


def make(task: str | None, turns: list[tuple[str, str, bool]], reward: float | None = 1.0, **extra) -> Trajectory:
    built = [Turn(role=Role(role), text=text, loss=loss) for role, text, loss in turns]
    return Trajectory(
        id=trajectory_id("test", "x", built),
        source="test",
        source_id="x",
        task=task,
        turns=built,
        reward=reward,
        **extra,
    )


def episode_turns(*outputs: str, observations: list[str] | None = None) -> list[tuple[str, str, bool]]:
    """A prompt, then agent outputs each followed by an observation."""
    observations = observations or [f"observation {i}" for i in range(len(outputs))]
    turns = [("user", "You are an agent. Solve the task.", False)]
    for output, observation in zip(outputs, observations, strict=True):
        turns += [("assistant", output, True), ("user", observation, False)]
    return turns


def outcome(trajectory: Trajectory, config: RewardFilterConfig | None = None):
    """(kept trajectory or Filtered, stats) from the step's processor."""
    fn = RewardFilterFn(config or RewardFilterConfig())
    results = list(fn(trajectory))
    stats = Counter()
    main = None
    for item in results:
        if isinstance(item, Stat):
            stats[item.name] += item.value
        else:
            main = item
    return main, stats


# --- thresholds and reward fields ------------------------------------------------------------


def test_thresholds_default_mind2web_babyai_and_override():
    config = RewardFilterConfig(thresholds={"webshop": 0.5})
    assert config.threshold_of("alfworld") == 1.0
    assert config.threshold_of(None) == 1.0
    assert config.threshold_of("mind2web") == pytest.approx(2 / 3)
    assert config.threshold_of("babyai") == 0.1
    assert config.threshold_of("webshop") == 0.5
    done = episode_turns("Action: click[Buy Now]")
    assert judge(make("webshop", done, reward=0.5), config).kept
    assert not judge(make("webshop", done, reward=0.49), config).kept
    assert judge(make("mind2web", episode_turns("Answer: B"), reward=0.6666666666666666)).kept  # float of 2/3
    assert not judge(make("mind2web", episode_turns("Answer: B"), reward=0.66)).kept
    assert not judge(make("alfworld", episode_turns("go to desk 1"), reward=0.99)).kept


def test_below_threshold_is_filtered_to_the_rejected_port():
    result, stats = outcome(make("alfworld", episode_turns("go to desk 1"), reward=0.5))
    assert isinstance(result, Filtered)
    assert result.reason == "below_threshold" and result.port == "rejected"
    assert "0.5 < threshold 1" in result.detail
    assert stats["task_in:alfworld"] == 1 and stats["task_kept:alfworld"] == 0
    no_port, _ = outcome(make("alfworld", episode_turns("x"), reward=0.5), RewardFilterConfig(rejected_port=False))
    assert no_port.port is None


def test_missing_reward_policies():
    trajectory = make("alfworld", episode_turns("go to desk 1"), reward=None)
    dropped, _ = outcome(trajectory)
    assert isinstance(dropped, Filtered) and dropped.reason == "missing_reward"
    kept, stats = outcome(trajectory, RewardFilterConfig(missing_reward="keep"))
    assert kept == trajectory and stats["task_kept:alfworld"] == 1
    with pytest.raises(RecordError) as err:
        judge(trajectory, RewardFilterConfig(missing_reward="dead_letter"))
    assert err.value.reason == "missing_reward"
    # keep still runs the other checks
    looping = make("alfworld", episode_turns("look", "look", "look"), reward=None)
    assert judge(looping, RewardFilterConfig(missing_reward="keep")).violations[0][0] == "repeated_output"


def test_reward_from_metadata_and_success_fields():
    trajectory = make("alfworld", episode_turns("go"), reward=None, success=True, metadata={"eval": {"score": 1}})
    assert judge(trajectory, RewardFilterConfig(reward_field="metadata.eval.score")).kept
    assert judge(trajectory, RewardFilterConfig(reward_field="success")).kept
    failed = trajectory.model_copy(update={"success": False, "metadata": {"eval": {"score": 0.2}}})
    assert judge(failed, RewardFilterConfig(reward_field="metadata.eval.score")).violations[0][0] == "below_threshold"
    assert judge(failed, RewardFilterConfig(reward_field="success")).violations[0][0] == "below_threshold"
    bad = trajectory.model_copy(update={"metadata": {"eval": {"score": "high"}}})
    with pytest.raises(RecordError) as err:
        judge(bad, RewardFilterConfig(reward_field="metadata.eval.score"))
    assert err.value.reason == "invalid_reward"
    with pytest.raises(RecordError):
        judge(trajectory.model_copy(update={"reward": float("nan")}), RewardFilterConfig())


def test_success_false_fails_whatever_the_reward():
    done = episode_turns("go to red ball 1", observations=["... The task is completed."])
    shaped = make("babyai", done, reward=0.9, success=False)
    result, stats = outcome(shaped)
    assert isinstance(result, Filtered) and result.reason == "unsuccessful" and result.port == "rejected"
    assert "success is false (reward 0.9" in result.detail
    assert stats["task_filtered:babyai:unsuccessful"] == 1 and stats["violation:unsuccessful"] == 1
    assert judge(shaped.model_copy(update={"success": True})).kept
    assert judge(shaped.model_copy(update={"success": None})).kept  # no flag: the reward decides
    full = make("webshop", episode_turns("click[Buy Now]"), reward=1.0, success=False)
    assert [r for r, _ in judge(full).violations] == ["unsuccessful"]
    both = make("webshop", episode_turns("click[Buy Now]"), reward=0.2, success=False)
    assert [r for r, _ in judge(both).violations] == ["below_threshold", "unsuccessful"]
    # a source whose flag is not recorded opts out per task; the check can be switched off
    assert judge(shaped, RewardFilterConfig(ignore_success_flag=["babyai"])).kept
    assert not judge(full, RewardFilterConfig(ignore_success_flag=["babyai"])).kept
    assert judge(full, RewardFilterConfig(checks=["reward", "final_answer"])).kept


def test_config_is_validated_early():
    with pytest.raises(ValidationError):
        RewardFilterConfig(reward_field="score")
    with pytest.raises(ValidationError):
        RewardFilterConfig(invalid_action_patterns={"alfworld": ["(unclosed"]})
    with pytest.raises(ValidationError):
        RewardFilterConfig(final_answer={"os": {"pattern": "[", "where": "last_output"}})
    with pytest.raises(ValidationError):
        RewardFilterConfig(thresold=0.5)  # typo: unknown key
    with pytest.raises(ValidationError):
        RewardFilterConfig(checks=["reward", "reward"])


# --- repeated outputs ----------------------------------------------------------------------


def test_three_identical_outputs_in_a_row_fail():
    three = make("alfworld", episode_turns("go to desk 1", "go to desk 1", "  go to   desk 1\n"))
    verdict = judge(three)
    assert [r for r, _ in verdict.violations] == ["repeated_output"]
    assert "3 times in a row" in verdict.violations[0][1]
    assert judge(make("alfworld", episode_turns("a", "a", "b", "a"))).kept  # only twice in a row
    assert judge(make("alfworld", episode_turns("a", "b", "a", "b", "a"))).kept  # not consecutive
    assert not judge(make("alfworld", episode_turns("a", "a")), RewardFilterConfig(repeat_limit=2)).kept


def test_in_context_example_turns_do_not_count():
    # AgentInstruct style: the 1-shot example is assistant turns with loss=false
    turns = [
        ("user", "task prompt", False),
        ("assistant", "OK.", False),
        ("user", "example", False),
        ("assistant", "OK.", False),
        ("user", "example 2", False),
        ("assistant", "OK.", True),
        ("user", "obs", False),
        ("assistant", "Act: finish", True),
    ]
    ep = episode(make("os", turns))
    assert ep.outputs == ["OK.", "Act: finish"]
    assert ep.observations == ["obs"]
    assert longest_repeat(ep) == (1, "OK.")


def test_repeat_scope_output_and_observation():
    crafting = make(
        "textcraft",
        episode_turns(
            "> craft 1 iron ingot using 9 iron nugget",
            "> craft 1 iron ingot using 9 iron nugget",
            "> craft 1 iron ingot using 9 iron nugget",
            observations=[
                "Crafted 1 minecraft:iron_ingot",
                "Crafted 1 minecraft:iron_ingot (2)",
                "Crafted 1 minecraft:iron_ingot",
            ],
        ),
    )
    assert judge(crafting).violations[0][0] == "repeated_output"  # the paper's literal rule
    scoped = RewardFilterConfig(repeat_scope="output_and_observation")
    assert judge(crafting, scoped).kept  # the world changed between the outputs
    stuck = make(
        "textcraft", episode_turns("> look", "> look", "> look", observations=["same", "same", "Crafted 1 minecraft:x"])
    )
    assert judge(stuck, scoped).violations[0][0] == "repeated_output"


# --- invalid actions -------------------------------------------------------------------------


def test_invalid_actions_per_environment():
    # an unparseable action is invalid in every environment...
    unparsed = make(
        "kg",
        episode_turns(
            "get_relations Barbaro",
            "Final Answer: #0",
            observations=["No executable function found! Need to recheck the action.", "ok"],
        ),
    )
    verdict = judge(unparsed)
    assert verdict.violations[0][0] == "invalid_action" and "No executable function found" in verdict.violations[0][1]
    assert judge(unparsed, RewardFilterConfig(max_invalid_actions=1)).kept
    for task in ("os", "db", "webshop", None):
        turns = episode_turns("x", observations=["No executable function found! Need to recheck the action."])
        assert "invalid_action" in [r for r, _ in judge(make(task, turns)).violations]
    invalid = make(
        "webshop", episode_turns("click[foo]", "click[Buy Now]", observations=["Invalid action!", "Thank you"])
    )
    assert judge(invalid).violations[0][0] == "invalid_action"
    # ...as is an unknown command: TextCraft answers "Could not execute" when no command matches
    unknown = make(
        "textcraft",
        episode_turns(
            "> get clay",
            "> craft 1 bread using 3 wheat",
            observations=["Could not execute get clay", "Crafted 1 minecraft:bread"],
        ),
    )
    assert judge(unknown).violations[0][0] == "invalid_action"
    babyai = make(
        "babyai",
        episode_turns("pick up key", observations=["The action is not recognized. Please check valid actions."]),
        reward=0.9,
    )
    assert judge(babyai).violations[0][0] == "invalid_action"
    # an environment refusing a well-formed action is an observation, not an invalid action
    nothing = make(
        "alfworld",
        episode_turns("open drawer 9", "go to desk 1", observations=["Nothing happens.", "You arrive at desk 1."]),
    )
    assert judge(nothing).kept
    refused = make(
        "textcraft",
        episode_turns(
            "> craft 1 furnace using 8 cobblestone",
            "> get 8 cobblestone",
            "> craft 1 furnace using 8 cobblestone",
            observations=[
                "Could not find enough items to craft minecraft:furnace",
                "Got 8 cobblestone",
                "Crafted 1 minecraft:furnace",
            ],
        ),
    )
    assert judge(refused).kept
    no_recipe = refused.model_copy(
        update={
            "turns": [
                t.model_copy(update={"text": "Could not find a valid recipe for minecraft:furnace"}) if i == 2 else t
                for i, t in enumerate(refused.turns)
            ]
        }
    )
    assert judge(no_recipe).kept
    for observation in (
        "You cannot drop the object, as there is already an object in front of you.",
        "There is a barrier in front of you, you can't move forward.",
        "No change in state.",
    ):
        turns = episode_turns(
            "Thought: drop it.\n\nAction:\ndrop",
            "Action: go to red ball 1",
            observations=[observation, "... The task is completed."],
        )
        assert judge(make("babyai", turns, reward=0.9), RewardFilterConfig(checks=["invalid_action"])).kept
    # BabyAI says "No change in state" to a valid no-op and to an output it cannot parse: the
    # agent's output decides (a line-initial "Action:" is well-formed)
    for malformed in ("Thought: turn.\n\n**Action:**  \nturn left", "I will turn left."):
        turns = episode_turns(malformed, "Action: done", observations=["No change in state.", "The task is completed."])
        verdict = judge(make("babyai", turns, reward=0.9), RewardFilterConfig(checks=["invalid_action"]))
        assert verdict.violations[0][0] == "invalid_action" and "No change in state" in verdict.violations[0][1]
    # an output that writes the environment's answers itself holds more than one action
    invented = make(
        "textcraft",
        episode_turns(
            "> get oak fence\nCould not find oak fence\n\n> get 2 oak log",
            "> craft 4 oak planks using 1 oak log",
            observations=["Got 2 oak log", "Crafted 4 minecraft:oak_planks"],
        ),
    )
    verdict = judge(invented)
    assert verdict.violations[0][0] == "invalid_action" and "output writes 'Could not find'" in verdict.violations[0][1]
    assert judge(invented, RewardFilterConfig(invalid_output_patterns={"textcraft": []})).kept
    thinking = make(
        "textcraft",
        episode_turns(
            "> think: my inventory is empty; I got nothing yet.\nOK.\n\n> get 2 oak log",
            "> craft 4 oak planks using 1 oak log",
            observations=["Got 2 oak log", "Crafted 4 minecraft:oak_planks"],
        ),
    )
    assert judge(thinking).kept  # thoughts that mention the inventory are no invented answers
    # an empty output is a malformed action in every environment, whatever the answer
    empty = make("webshop", episode_turns("search[shoes]", "  \n", "click[Buy Now]"))
    verdict = judge(empty)
    assert verdict.violations[0][0] == "invalid_action" and "(empty output)" in verdict.violations[0][1]
    assert judge(empty, RewardFilterConfig(empty_output_is_invalid=False)).kept
    # a user's own patterns replace a task's defaults
    assert (
        judge(
            make("alfworld", episode_turns("x", observations=["Nothing happens."])),
            RewardFilterConfig(invalid_action_patterns={"alfworld": [r"^Nothing happens"]}),
        ).violations[0][0]
        == "invalid_action"
    )
    assert judge(unknown, RewardFilterConfig(invalid_action_patterns={"textcraft": []})).kept
    paired = RewardFilterConfig(
        invalid_action_patterns={"alfworld": [{"observation": "^Nothing happens", "unless_output": "^(go to|open) "}]}
    )
    assert judge(nothing, paired).kept  # both actions were well-formed
    unknown_command = make(
        "alfworld",
        episode_turns(
            "THOUGHT: done.\n ACTION: Task succeeded.",
            "ACTION: put fork 1 in/on drawer 2",
            observations=["Nothing happens.", "You put the fork 1 in/on the drawer 2."],
        ),
    )
    assert judge(unknown_command).violations[0][0] == "invalid_action"
    refused = make(
        "alfworld",
        episode_turns(
            "THOUGHT: maybe drawer 9.\n ACTION: open drawer 9",
            "ACTION: go to desk 1",
            observations=["Nothing happens.", "On the desk 1, you see a pen 1."],
        ),
    )
    assert judge(refused).kept
    odd = make("alfworld", episode_turns("opne drawer 9", observations=["Nothing happens."]))
    assert judge(odd, paired).violations[0][0] == "invalid_action"
    with pytest.raises(ValidationError):
        RewardFilterConfig(invalid_action_patterns={"alfworld": [{"observation": "(", "unless_output": "x"}]})
    custom = RewardFilterConfig(invalid_action_patterns={"os": [r"^command not found"]})
    assert not judge(
        make("os", episode_turns("Act: bash", "Act: finish", observations=["command not found", "ok"])), custom
    ).kept


def test_invalid_action_phrase_in_the_prompt_does_not_count():
    turns = [
        ("user", "Example: > get_relations x\nNo executable function found!\nNow solve your task.", False),
        ("assistant", "Final Answer: #0", True),
        ("user", "Done.", False),
    ]
    assert judge(make("kg", turns)).kept


# --- final answers ---------------------------------------------------------------------------


def test_final_answer_rules():
    assert judge(make("webshop", episode_turns("search[shoes]", "click[Buy Now]"))).kept
    unfinished = judge(make("webshop", episode_turns("search[shoes]", "click[b0123]")))
    assert unfinished.violations[0][0] == "no_final_answer"
    assert judge(make("os", episode_turns("Act: bash\n```bash\nls\n```", "Act: answer(3)"))).kept
    assert not judge(make("os", episode_turns("Act: bash\n```bash\nls\n```"))).kept
    assert judge(make("kg", episode_turns("Action: get_relations(x)", "Final Answer: #3"))).kept
    assert judge(make("db", episode_turns('Action: Answer\nFinal Answer: ["1"]'))).kept
    assert judge(
        make("babyai", episode_turns("go to red ball 1", observations=["... The task is completed."]), reward=0.9)
    ).kept
    assert not judge(
        make("babyai", episode_turns("go to red ball 1", observations=["You see a wall."]), reward=0.9)
    ).kept
    assert judge(
        make("textcraft", episode_turns("> craft 1 bread using 3 wheat", observations=["Crafted 1 minecraft:bread"]))
    ).kept
    # tasks without a rule, and rules switched off
    assert judge(make("alfworld", episode_turns("go to desk 1"))).kept
    assert judge(
        make("webshop", episode_turns("click[b0123]")), RewardFilterConfig(final_answer={"webshop": None})
    ).kept
    custom = RewardFilterConfig(final_answer={"alfworld": {"pattern": "^put ", "where": "last_output"}})
    assert not judge(make("alfworld", episode_turns("go to desk 1")), custom).kept
    assert judge(make("webshop", episode_turns("click[b0123]")), RewardFilterConfig(checks=["reward"])).kept


MIND2WEB_PAGE = (
    "'''\n<html> <li id=0> <a id=1> <p> Store Locator </p> </a> </li> </html>\n'''\n\n"
    "Task: Locate a large store in Washington that has kids' and maternity products.\n"
    "Previous actions:\nNone\nWhat should be the next action?\n\n"
    "A. None of the above\nB. <a id=1> <p> Store Locator </p> </a>"
)


def test_an_output_whose_thought_names_what_the_episode_never_showed_is_ungrounded():
    other_episode = (
        'Thought: The "TRAVEL INFO" tab has been clicked, and the next task is to find Wi-Fi '
        'subscriptions. I should click on the "Pre-paid Wi-Fi" link.\nAnswer: D.\nAction: CLICK'
    )
    this_episode = (
        "Thought: To find a store in Washington, I'll open the 'Store Locator' first.\nAnswer: B.\nAction: CLICK"
    )
    ungrounded = make("mind2web", [("user", MIND2WEB_PAGE, False), ("assistant", other_episode, True)])
    grounded = make("mind2web", [("user", MIND2WEB_PAGE, False), ("assistant", this_episode, True)])
    kept, stats = outcome(grounded)
    assert isinstance(kept, Trajectory) and "violation:ungrounded_output" not in stats
    dropped, stats = outcome(ungrounded)
    assert isinstance(dropped, Filtered) and dropped.reason == "ungrounded_output"
    assert "TRAVEL INFO" in dropped.detail and "Pre-paid Wi-Fi" in dropped.detail
    assert stats["violation:ungrounded_output"] == 1
    assert thought_names(this_episode) == ["Store Locator", "Washington"]  # "I'll" is no quote, "I" no name
    assert thought_names("Answer: B.\nAction: CLICK") == []  # only thoughts are read
    # only the tasks in grounded_tasks (default: Mind2Web), and only with the check on
    webshop = make("webshop", [("user", MIND2WEB_PAGE, False), ("assistant", other_episode, True)])
    only_grounded = RewardFilterConfig(checks=["grounded"])
    assert judge(webshop, only_grounded).kept
    assert not judge(webshop, only_grounded.model_copy(update={"grounded_tasks": ["webshop"]})).kept
    assert judge(ungrounded, RewardFilterConfig(checks=["reward"])).kept


MIND2WEB_FORM = (
    "'''\n<html> <form> <input id=0 text first name /> <select id=1 state> <option> Ohio </option> </select> "
    "<a id=2> Deals </a> </form> </html>\n'''\n\n"
    "Task: Find deals near Columbus for Jane.\n"
    "Previous actions:\n[link]  Stores -> CLICK\n[select]  State -> SELECT: Ohio\nWhat should be the next action?\n\n"
    "A. None of the above\nB. <input id=0 text first name />\nC. <select id=1 state> <option> Ohio </option>\n"
    "D. <a id=2> Deals </a>"
)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("Answer: F.\nAction: CLICK", "answer F is not among the choices A, B, C, D"),
        ("Answer: A. None of the above\nAction: CLICK\nValue: Search", "comes with an action (CLICK)"),
        ("Answer: D.", "has no action"),
        ("Answer: D.\nAction: SET\nValue: Deals", "action SET is none of CLICK, TYPE, SELECT"),
        ("Answer: D.\nAction: TYPE\nValue: Jane", "TYPE on '<a id=2> Deals </a>': TYPE takes input, textarea"),
        ("Answer: B.\nAction: SELECT\nValue: Jane", "SELECT on '<input id=0 text first name />'"),
        ("Answer: C.\nAction: TYPE\nValue: Ohio", "TYPE on '<select id=1 state>"),
        ("Answer: B.\nAction: TYPE", "TYPE without a value"),
        ("Answer: B.\nAction: TYPE\nValue: Smith", "value 'Smith' appears in no earlier turn"),
        ("Answer: B.\nAction: TYPE\nValue: Jane\nAnswer: D.\nAction: CLICK", "several answers (B, D)"),
        ("Action: CLICK", "no 'Answer:' letter"),
    ],
)
def test_a_choice_answer_that_contradicts_its_choices_is_inconsistent(answer: str, why: str):
    trajectory = make("mind2web", [("user", MIND2WEB_FORM, False), ("assistant", f"Thought: Next.\n{answer}", True)])
    dropped, stats = outcome(trajectory)
    assert isinstance(dropped, Filtered) and dropped.reason == "inconsistent_choice"
    assert dropped.detail.startswith("turn 1: ") and why in dropped.detail
    assert stats["violation:inconsistent_choice"] == 1


@pytest.mark.parametrize(
    "answer",
    [
        "Answer: D.\nAction: CLICK",
        "Answer: B.\nAction: CLICK",  # a click may focus an input
        "Answer: B.\nAction: TYPE\nValue: jane.",  # case and a closing full stop do not matter
        'Answer: B.\nAction: TYPE.\nValue: "Columbus"',
        "Answer: C.\nAction: SELECT\nValue: Ohio",  # a value the previous actions show
        "Answer: A. None of the above",
        "Answer: A.",
    ],
)
def test_a_choice_answer_the_page_allows_is_kept(answer: str):
    trajectory = make("mind2web", [("user", MIND2WEB_FORM, False), ("assistant", f"Thought: Next.\n{answer}", True)])
    assert choice_problem(trajectory) is None
    kept, stats = outcome(trajectory)
    assert isinstance(kept, Trajectory) and "violation:inconsistent_choice" not in stats


def test_the_choice_check_reads_only_its_tasks_and_its_operations():
    wrong = [("user", MIND2WEB_FORM, False), ("assistant", "Answer: D.\nAction: TYPE\nValue: Jane", True)]
    only_choice = RewardFilterConfig(checks=["choice"])
    assert not judge(make("mind2web", wrong), only_choice).kept
    assert judge(make("webshop", wrong), only_choice).kept  # not in choice_tasks
    assert not judge(make("webshop", wrong), only_choice.model_copy(update={"choice_tasks": ["webshop"]})).kept
    assert judge(make("mind2web", wrong), RewardFilterConfig(checks=["reward"])).kept
    # operations are configurable: typing into any element, or HOVER as an operation of its own
    anywhere = RewardFilterConfig(checks=["choice"], choice_operations={"CLICK": [], "TYPE": [], "SELECT": ["Select"]})
    assert anywhere.choice_operations["SELECT"] == ["select"]
    assert judge(make("mind2web", wrong), anywhere).kept
    hover = [("user", MIND2WEB_FORM, False), ("assistant", "Answer: D.\nAction: HOVER", True)]
    assert not judge(make("mind2web", hover), only_choice).kept
    with_hover = RewardFilterConfig(checks=["choice"], choice_operations={"CLICK": [], "HOVER": []})
    assert judge(make("mind2web", hover), with_hover).kept
    with pytest.raises(ValidationError, match="capitals"):
        RewardFilterConfig(choice_operations={"click": []})
    # an output without lettered choices before it is not read; an unsupervised one neither
    assert choice_problem(make("mind2web", [("user", "Find deals.", False), ("assistant", "Answer: Q.", True)])) is None
    assert (
        choice_problem(make("mind2web", [("user", MIND2WEB_FORM, False), ("assistant", "Answer: F.", False)])) is None
    )
    assert choices_of(MIND2WEB_FORM)["D"] == "<a id=2> Deals </a>"


def test_first_failing_check_is_the_reason_and_all_are_counted():
    trajectory = make("webshop", episode_turns("click[Next >]", "click[Next >]", "click[Next >]"), reward=0.0)
    result, stats = outcome(trajectory)
    assert result.reason == "below_threshold"
    assert "also: repeated_output, no_final_answer" in result.detail
    assert (
        stats["violation:below_threshold"]
        == stats["violation:repeated_output"]
        == stats["violation:no_final_answer"]
        == 1
    )


# --- real data -------------------------------------------------------------------------------


def _read(path: Path, fmt: str = "openai", source: str = "agentgym") -> list[Trajectory]:
    reader = ReadFile(ReadConfig(format=fmt, paths=[str(path)], source=source), source)
    return [t for t in reader(str(path)) if isinstance(t, Trajectory)]


def _at(path: Path, index: int, fmt: str = "openai") -> Trajectory:
    (found,) = [t for t in _read(path, fmt) if t.metadata["location"] == f"{path.name}:line {index + 1}"]
    return found


def _reasons(trajectory: Trajectory, config: RewardFilterConfig | None = None) -> list[str]:
    return [r for r, _ in judge(trajectory, config or RewardFilterConfig()).violations]


@pytest.mark.real_data
def test_real_rollouts_that_break_the_rules(external):
    root = external(AGENTGYM)
    # babyai: "Thought: Continue. Action: move forward" four times while stuck at a wall
    babyai = RewardFilterConfig(ignore_success_flag=["babyai"])  # the rollouts never record success
    looping = _at(root / "babyai__deepseek-v3.2_20251210_111646.jsonl", 84)
    assert looping.reward > 0.1 and _reasons(looping) == ["unsuccessful", "repeated_output"]
    assert _reasons(looping, babyai) == ["repeated_output"]
    # babyai: the environment answers "The action is not recognized" (reward 0.9 notwithstanding)
    unrecognised = _at(root / "babyai__gemini-3-pro-preview_20251211_135610.jsonl", 20)
    assert unrecognised.reward == 0.9 and _reasons(unrecognised) == ["unsuccessful", "invalid_action"]
    assert _reasons(unrecognised, babyai) == ["invalid_action"]
    # textcraft: the model wrote a whole episode with fake observations as one action; the game
    # parses none of it as a command and answers "Could not execute ..." (success 1 notwithstanding)
    fake = _at(root / "textcraft__gemini-3-pro-preview_20251216_101619.jsonl", 0)
    assert fake.reward == 1.0 and fake.success and _reasons(fake) == ["invalid_action"]
    assert "Could not execute" in judge(fake).violations[0][1]
    assert (
        "Could not execute"
        in judge(fake, RewardFilterConfig(invalid_output_patterns={"textcraft": []})).violations[0][1]
    )
    # textcraft: the env ran the last command of an output that invented "Could not find oak fence"
    invented = _at(root / "textcraft__gemini-3-pro-preview_20251216_101619.jsonl", 305)
    assert invented.success and _reasons(invented) == ["invalid_action"]
    assert "output writes 'Could not find'" in judge(invented).violations[0][1]
    # written by the model, in its first output (the "OK." acknowledgement of the prompt is not one)
    assert "Crafted 1 minecraft:slime_block" in episode(fake).raw_outputs[0]
    # webshop: the same thought and click six times in a row, reward 0.857
    paging = _at(root / "webshop__qwen-max_20251127_090652.jsonl", 1)
    assert _reasons(paging) == ["below_threshold", "unsuccessful", "repeated_output"]
    assert "6 times in a row" in judge(paging).violations[2][1]


@pytest.mark.real_data
def test_real_agentinstruct_trajectories_that_break_the_rules(external):
    kg = {t.source_id: t for t in _read(external("agentinstruct_thudm", "kg.shared80.parquet"), "agentinstruct")}
    assert _reasons(kg["kg_31"], RewardFilterConfig(missing_reward="keep")) == [
        "repeated_output",
        "invalid_action",  # "No executable function found! Need to recheck the action."
        "no_final_answer",
    ]
    alfworld = {
        t.source_id: t for t in _read(external("agentinstruct_thudm", "alfworld.shared80.parquet"), "agentinstruct")
    }
    # "Nothing happens." answers "ACTION: end task" here: no ALFWorld command, an unknown action
    ended = alfworld["alfworld_67"]
    assert sum("Nothing happens" in t.text for t in ended.turns) >= 4
    verdict = judge(ended, RewardFilterConfig(missing_reward="keep"))
    assert [r for r, _ in verdict.violations] == ["invalid_action"] and "Nothing happens" in verdict.violations[0][1]
    # "ACTION: Task succeeded." before the task was done, then the agent went on and finished it
    premature = alfworld["alfworld_37"]
    assert any("ACTION: Task succeeded." in t.text for t in premature.turns if t.loss)
    assert _reasons(premature, RewardFilterConfig(missing_reward="keep")) == ["invalid_action"]
    # with the reward check alone, everything passes; all checks (the recipe's) drop 32
    released = RewardFilterConfig(missing_reward="keep", checks=["reward"])
    everything = [
        t for path in sorted(external("agentinstruct_thudm").glob("*.parquet")) for t in _read(path, "agentinstruct")
    ]
    assert len(everything) == 1465
    assert all(judge(t, released).kept for t in everything)
    all_checks = RewardFilterConfig(missing_reward="keep")
    first_reasons = [_reasons(t, all_checks)[:1] for t in everything]
    strict = Counter(reasons[0] for reasons in first_reasons if reasons)
    assert strict == {
        "invalid_action": 23,
        "no_final_answer": 6,
        "repeated_output": 3,
        "ungrounded_output": 26,
        "inconsistent_choice": 15,
    }
    # Mind2Web answers that contradict their choices: 22, 7 of them also written for another episode
    contradicting = [t for t in everything if judge(t, RewardFilterConfig(checks=["choice"])).violations]
    assert len(contradicting) == 22 and {t.task for t in contradicting} == {"mind2web"}
    dropped = {t.source_id for t, reasons in zip(everything, first_reasons, strict=True) if reasons}
    unparsed = {t.source_id for t in everything if any("No executable function found" in u.text for u in t.turns)}
    assert unparsed <= dropped  # every episode with an unparseable action is dropped
    # every released "Nothing happens." answers a text that is no ALFWorld command
    nothing = {t.source_id for t in everything if any(u.text.startswith("Nothing happens") for u in t.turns)}
    assert len(nothing) == 12 and nothing <= dropped


@pytest.mark.real_data
def test_mind2web_partial_credit_threshold_on_real_rows(external):
    """Mind2Web is the one task kept below full reward (>= 2/3). No shipped source has fractional
    Mind2Web rewards, so real AgentInstruct Mind2Web rows get rewards k / n (partial credit over
    n steps, also summed step by step as an environment accumulates it)."""
    rows = _read(external("agentinstruct_thudm", "mind2web.shared80.parquet"), "agentinstruct")
    assert len(rows) == 103 and all(t.task == "mind2web" and t.reward is None for t in rows)
    rows = [t for t in rows if judge(t, RewardFilterConfig(missing_reward="keep")).kept]  # the other rules pass
    fn = RewardFilterFn(RewardFilterConfig())
    expected_kept = kept = seen = 0
    index = 0
    for n in (3, 4, 5, 6, 9):
        for k in range(n + 1):
            for reward in (k / n, sum([1 / n] * k)):
                row = rows[index % len(rows)].model_copy(update={"reward": reward})
                index += 1
                results = list(fn(row))
                passed = any(isinstance(r, Trajectory) for r in results)
                should = k * 3 >= 2 * n  # exact rational comparison: k / n >= 2 / 3
                assert passed == should, (k, n, reward, [r for r in results if isinstance(r, Filtered)])
                if not should:
                    (filtered,) = [r for r in results if isinstance(r, Filtered)]
                    assert filtered.reason == "below_threshold" and "threshold 0.666667" in filtered.detail
                seen += 1
                kept += passed
                expected_kept += should
    assert seen == 2 * sum(n + 1 for n in (3, 4, 5, 6, 9)) and kept == expected_kept > 0
    # the same rows at 2/3 as another task fall below that task's full-reward threshold
    webshop_like = rows[0].model_copy(update={"reward": 2 / 3, "task": "alfworld"})
    assert _reasons(webshop_like, RewardFilterConfig(checks=["reward"])) == ["below_threshold"]
    # and a user may move the threshold
    assert judge(rows[0].model_copy(update={"reward": 0.5}), RewardFilterConfig(thresholds={"mind2web": 0.5})).kept


# Independent restatement of the documented rules on the raw JSON (no agentmill code involved).
THRESHOLD = {"babyai": 0.1}
INVALID = {
    "babyai": [r"The action is not recognized", r"Only one 'Action' is allowed"],
    # "No change in state" counts when the output it answers has no line-initial "Action:"
    "textcraft": [r"(?m)^\s*Could not execute", r"(?m)^\s*Could not extract recipe", r"(?m)^\s*Wrong item format"],
}
FINAL = {
    "webshop": lambda last_out, last_obs: re.search(r"(?i)click\[\s*buy now\s*\]", last_out),
    "babyai": lambda last_out, last_obs: "The task is completed" in last_obs,
    "textcraft": lambda last_out, last_obs: re.match(r"\s*Crafted \d+ minecraft:", last_obs),
}


def expected_reasons(record: dict) -> list[str]:
    task = record["task_name"]
    messages = record["conversations"]
    outputs = [" ".join(m["content"].split()) for m in messages if m["role"] == "assistant"]
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    observations = [m["content"] for m in messages[first:] if m["role"] == "user"]
    reasons = []
    if record["reward"] < THRESHOLD.get(task, 1.0):
        reasons.append("below_threshold")
    if not record["success"]:
        reasons.append("unsuccessful")
    if any(outputs[i] == outputs[i + 1] == outputs[i + 2] for i in range(len(outputs) - 2)):
        reasons.append("repeated_output")
    patterns = [r"(?m)^\s*Invalid action\b", "No executable function found", *INVALID.get(task, [])]
    answered = [
        (m["content"], messages[i - 1]["content"])
        for i, m in enumerate(messages)
        if i > first and m["role"] == "user" and messages[i - 1]["role"] == "assistant"
    ]
    no_change = [
        o
        for o, a in answered
        if re.match(r"(?i)\s*No change in state", o) and not re.search(r"(?im)^\s*Action:\s*\S", a)
    ]
    invented = r"(?im)^\s*(?:Got \d+ |Crafted \d+ minecraft:|Could not (?:find|execute)\b|Inventory: )"
    raw_outputs = [m["content"] for m in messages if m["role"] == "assistant"]
    if (
        any(re.search("(?i)" + p, o) for o in observations for p in patterns)
        or (task == "babyai" and no_change)
        or (task == "textcraft" and any(re.search(invented, o) for o in raw_outputs))
        or any(not o.strip() for o in outputs)
    ):
        reasons.append("invalid_action")
    last_out = [m["content"] for m in messages if m["role"] == "assistant"][-1]
    if not FINAL[task](last_out, observations[-1] if observations else ""):
        reasons.append("no_final_answer")
    return reasons


def raw_rollouts(root: Path) -> dict[str, dict]:
    records = {}
    for path in sorted(glob.glob(str(root / "*.jsonl"))):
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                records[f"{os.path.basename(path)}:line {number}"] = json.loads(line)
    for path in sorted(glob.glob(str(root / "*" / "*.json"))):  # one object per file: named by its folder
        with open(path, encoding="utf-8") as handle:
            records[os.path.relpath(path, root)] = json.load(handle)
    return records


@pytest.mark.real_data
@pytest.mark.slow
def test_agentgym_rollouts_kept_set_and_reasons(external, tmp_path):
    root = external(AGENTGYM)
    raw = raw_rollouts(root)
    assert len(raw) == 685
    expected = {location: expected_reasons(record) for location, record in raw.items()}
    expected_kept = {loc for loc, reasons in expected.items() if not reasons}
    expected_filtered = Counter(reasons[0] for reasons in expected.values() if reasons)
    expected_violations = Counter(r for reasons in expected.values() for r in reasons)
    assert expected_filtered["below_threshold"] > 0 and expected_filtered["invalid_action"] > 0
    assert expected_filtered["repeated_output"] > 0 and expected_violations["no_final_answer"] > 0

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "reward_filter_real",
                "audit": {"enabled": False},  # this test is about the reward rules, not data quality
                "steps": [
                    {
                        "id": "read",
                        "type": "read",
                        "config": {
                            "format": "openai",
                            "source": "agentgym",
                            "paths": [str(root / "*.jsonl"), str(root / "*" / "*.json")],
                        },
                    },
                    {"id": "filter", "type": "reward_filter", "inputs": ["read"]},
                    {"id": "chat", "type": "to_chat", "inputs": ["filter"]},
                    {"id": "write", "type": "write", "inputs": ["chat"]},
                ],
            }
        )
    )
    out = tmp_path / "out"
    summary = run_spec(str(spec), str(out))
    ledger = summary.manifest.steps["filter"]
    assert ledger.in_ == 685
    assert ledger.passed == len(expected_kept)
    assert ledger.filtered == dict(expected_filtered)
    assert ledger.ports == {"rejected": sum(expected_filtered.values())}
    assert summary.manifest.ratios["filter"]["violations"] == dict(expected_violations)
    tasks = summary.manifest.ratios["filter"]["tasks"]
    assert tasks["babyai"]["threshold"] == 0.1 and tasks["webshop"]["threshold"] == 1.0
    assert sum(t["kept"] for t in tasks.values()) == len(expected_kept)

    codec = ArrowCodec(Sample)
    with pa.ipc.open_stream(str(out / "data-00000-of-00001.arrow")) as stream:
        samples = [codec.from_row(row) for row in stream.read_all().to_pylist()]
    assert {s.metadata["location"] for s in samples} == expected_kept
    rejected = [json.loads(line) for line in (out / "rejected" / "filter.jsonl").read_text().splitlines()]
    files = sorted(glob.glob(str(root / "*.jsonl"))) + sorted(glob.glob(str(root / "*" / "*.json")))
    reader = ReadFile(ReadConfig(format="openai", paths=files, source="agentgym"), "agentgym", str(root))
    location_of = {t.id: t.metadata["location"] for path in files for t in reader(path) if isinstance(t, Trajectory)}
    by_location = {location_of[r["record_id"]]: r["reason"] for r in rejected}
    assert by_location == {loc: reasons[0] for loc, reasons in expected.items() if reasons}


def test_step_declares_a_rejected_port():
    assert RewardFilter.extra_outputs == {"rejected": Trajectory}
    assert RewardFilter.type_name == "reward_filter"
