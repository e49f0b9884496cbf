"""clean_outputs: invented TextCraft answers deleted, outputs with several commands or without a
demanded thought taken out of the loss, everything else untouched, the ledger, the config."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas import Lineage, Message, Role, Sample, Trajectory, Turn, count_tokens, trajectory_id
from tests.helpers import rejected, run, write_spec
from transforms.base import Filtered, Stat, StepContext
from transforms.clean_outputs import CleanOutputsConfig, CleanOutputsFn, TaskRules, builtin_rules, delete_invented
from transforms.instruction_pairs import claimed_too_early

TEXTCRAFT_PROMPT = (
    "For any other natural language or thoughts, use prefix 'think: '.\n\n"
    "Goal: craft dark oak sign\n\n> think: I should check the inventory.\nOK.\n\n> inventory\n"
    "Inventory: [stick] (1)"
)
WEBSHOP_PROMPT = (
    "Your response should use the following format:\n\nThought:\nI think ... \n\nAction: \nclick[something]"
)


def episode(task: str, prompt: str, *turns: tuple[str, str], sid: str = "s0") -> Sample:
    """An agent sample: the prompt, the unsupervised "OK." acknowledgement, then ``turns`` of
    (role, text) with every assistant turn supervised."""
    messages = [
        Message(role=Role.SYSTEM, content="You are a helpful, respectful and honest assistant."),
        Message(role=Role.USER, content=prompt),
        Message(role=Role.ASSISTANT, content="OK."),
    ]
    messages += [Message(role=Role(role), content=text, loss=role == "assistant") for role, text in turns]
    return Sample(
        id=sid,
        kind="agent",
        messages=messages,
        lineage=Lineage(source="agentgym", source_id=sid, task=task, steps=["agent_chat"]),
        counts=count_tokens(messages),
    )


def apply(one: Sample, **config) -> tuple[list[Sample | Filtered], dict[str, int]]:
    outcomes = list(CleanOutputsFn(CleanOutputsConfig(**config), StepContext("clean"))(one))
    stats = {o.name: o.value for o in outcomes if isinstance(o, Stat)}
    return [o for o in outcomes if not isinstance(o, Stat)], stats


def test_delete_invented_removes_whole_lines_and_the_blank_line_they_leave():
    ok = builtin_rules()["textcraft"].invented
    assert ok is not None
    assert delete_invented("think: I need glass.\nOK.\n\n> get 8 glass", ok) == (
        "think: I need glass.\n\n> get 8 glass",
        1,
    )
    assert delete_invented("> get 8 glass\nOK.", ok) == ("> get 8 glass", 1)
    assert delete_invented("> think: done.\n> OK.\n", ok) == ("> think: done.", 1)
    unchanged = "think: the game said OK. before, so the craft worked.\n> inventory"
    assert delete_invented(unchanged, ok) == (unchanged, 0)


def test_textcraft_outputs_lose_the_invented_answer_and_several_commands_leave_the_loss():
    one = episode(
        "textcraft",
        TEXTCRAFT_PROMPT,
        ("user", "Crafting commands:\ncraft 1 glass pane using 6 glass\n\nGoal: craft glass pane."),
        ("assistant", "think: I need 6 glass.\nOK.\n\n> get 6 glass"),
        ("user", "Got 6 glass"),
        ("assistant", "> get 1 stick\n> get 2 stick"),
        ("user", "Got 2 stick"),
        ("assistant", "> craft 1 glass pane using 6 glass\nOK."),
        ("user", "Crafted 1 minecraft:glass_pane"),
    )
    (out,), stats = apply(one)
    assert isinstance(out, Sample)
    assert stats == {"deleted_lines": 2, "masked:several_actions": 1, "changed_samples": 1}
    outputs = [(m.content, m.loss) for m in out.messages if m.role is Role.ASSISTANT]
    assert outputs == [
        ("OK.", False),  # the acknowledgement before the episode is not an output: kept
        ("think: I need 6 glass.\n\n> get 6 glass", True),
        ("> get 1 stick\n> get 2 stick", False),  # stays as context for the observation after it
        ("> craft 1 glass pane using 6 glass", True),
    ]
    assert [m for m in out.messages if m.role is not Role.ASSISTANT] == [
        m for m in one.messages if m.role is not Role.ASSISTANT
    ]
    assert out.id == one.id and out.lineage.steps == ["agent_chat", "clean"]
    assert out.counts == count_tokens(out.messages) != one.counts
    assert TEXTCRAFT_PROMPT in out.messages[1].content  # the prompt's demo keeps its "OK." lines


def test_an_output_that_is_only_the_invented_answer_is_kept_and_leaves_the_loss():
    one = episode("textcraft", TEXTCRAFT_PROMPT, ("user", "Goal: craft stick."), ("assistant", "OK."), ("user", "x"))
    one.messages.append(Message(role=Role.ASSISTANT, content="> get 2 bamboo", loss=True))
    (out,), stats = apply(one)
    assert stats == {"masked:empty_after_deletion": 1, "changed_samples": 1}
    assert [(m.content, m.loss) for m in out.messages[-3:]] == [("OK.", False), ("x", False), ("> get 2 bamboo", True)]


def test_webshop_actions_without_the_demanded_thought_leave_the_loss():
    thought = "Thought:\nI think I should search.\n\nAction:\nsearch[red mug]"
    one = episode(
        "webshop",
        WEBSHOP_PROMPT,
        ("user", "WebShop [SEP] Search"),
        ("assistant", thought),
        ("user", "page 1"),
        ("assistant", "Action:\nclick[B0001]"),
        ("user", "item"),
    )
    (out,), stats = apply(one)
    assert stats == {"masked:missing_thought": 1, "changed_samples": 1}
    assert [(m.content, m.loss) for m in out.messages if m.role is Role.ASSISTANT][1:] == [
        (thought, True),
        ("Action:\nclick[B0001]", False),
    ]
    (kept,), stats = apply(one, missing_thought="keep")
    assert kept is one and stats == {}


@pytest.mark.parametrize(
    "task, one_action",
    [
        ("webshop", "Thought:\nI think I should pick the size.\n\nAction:\nclick[40w x 34l]"),
        ("kg", "Thought: I need the relations of Apple.\nAction: get_relations(Apple)"),
        ("os", "Think: I count the files.\n\nAct: bash\n\n```bash\nls | wc -l\n```"),
        ("alfworld", "THOUGHT: The mug is in the cabinet.\n ACTION: open cabinet 1"),
    ],
)
def test_a_react_output_that_runs_away_into_several_actions_leaves_the_loss(task, one_action):
    """webshop_106: one supervised WebShop output repeats its thought and action 76 times."""
    runaway = "\n".join([one_action + " Okay."] * 3)
    one = episode(task, "Solve the task.", ("user", "the task"), ("assistant", one_action), ("user", "obs"))
    (same,), stats = apply(one)
    assert same is one and stats == {}
    two = episode(task, "Solve the task.", ("user", "the task"), ("assistant", runaway), ("user", "obs"))
    two.messages.append(Message(role=Role.ASSISTANT, content=one_action, loss=True))
    (out,), stats = apply(two)
    assert stats == {"masked:several_actions": 1, "changed_samples": 1}
    assert [(m.content, m.loss) for m in out.messages[4:] if m.role is Role.ASSISTANT] == [
        (runaway, False),  # masked, kept as context
        (one_action, True),
    ]


def test_a_thought_the_format_calls_optional_is_not_demanded_and_other_samples_pass_unchanged():
    optional = episode(
        "alfworld",
        "Reply as:\nThought: <your reasoning> (optional)\nAction: <the tool>",
        ("user", "Your task is to: put a mug on the desk."),
        ("assistant", "Action: go_to"),
    )
    general = episode("", "Write a haiku.", ("assistant", "Thought: a haiku\nAction: write"))
    for one in (optional, general):
        (out,), stats = apply(one)
        assert out is one and stats == {}


def test_a_sample_left_without_a_supervised_turn_is_filtered_with_the_reason():
    one = episode("webshop", WEBSHOP_PROMPT, ("user", "WebShop [SEP] Search"), ("assistant", "Action:\nsearch[mug]"))
    (out,), stats = apply(one)
    assert isinstance(out, Filtered) and out.reason == "no_supervised_turn_left"
    assert "missing_thought" in out.detail and stats["masked:missing_thought"] == 1


def test_config_adds_or_replaces_task_rules_and_rejects_a_bad_regex():
    one = episode("sciworld", "Act.", ("user", "go"), ("assistant", "look around\n[Observation] a room"))
    rules = {"sciworld": {"invented_lines": [r"\[Observation\].*"]}}
    (out,), _ = apply(one, rules=rules)
    assert out.messages[-1].content == "look around"
    assert set(CleanOutputsConfig(rules=rules, replace=True).task_rules()) == {"sciworld"}
    assert set(CleanOutputsConfig(rules=rules).task_rules()) == {"sciworld", *builtin_rules()}
    assert {"textcraft", "db", "os", "fireact", "webshop", "kg", "alfworld"} <= set(builtin_rules())
    with pytest.raises(ValidationError, match="invalid regex"):
        CleanOutputsConfig(rules={"x": {"action_line": "("}})
    with pytest.raises(ValidationError):
        TaskRules(invented_lines=["ok"], typo=1)


DB_PROMPT = "I will ask you a question, then you should help me operate a MySQL database with SQL to answer it."


def test_db_claims_of_a_check_against_the_expected_answer_are_reworded():
    one = episode(
        "db",
        DB_PROMPT,
        ("user", "How many cards are red?"),
        ("assistant", "I count the red cards.\nAction: Operation\n```sql\nSELECT COUNT(*) FROM cards\n```"),
        ("user", "[(7,)]"),
        (
            "assistant",
            "The SQL query executed successfully and returned the expected answer. The answer matches the "
            "provided result, so I can commit my answer now. It is 7, which matches the provided value.\n"
            'Action: Answer\nFinal Answer: ["7"]',
        ),
    )
    (out,), stats = apply(one)
    assert out.messages[-1].content == (
        "The SQL query executed successfully and returned the answer. So I can commit my answer now. "
        'It is 7.\nAction: Answer\nFinal Answer: ["7"]'
    )
    assert out.messages[-1].loss and stats == {"rewritten": 3, "changed_samples": 1}
    assert out.messages[-3] == one.messages[-3]  # the other output is untouched
    # "the expected" after other verbs stays: only a claim about what the query returned is reworded
    kept = episode("db", DB_PROMPT, ("user", "q"), ("assistant", "The expected format is a list.\nAction: Answer"))
    assert apply(kept)[0] == [kept]


def test_an_output_citing_context_no_turn_showed_leaves_the_loss():
    cites = "Think: According to the hint 5, I will sort in reverse order.\nAct: bash\n```bash\nsort -r x\n```"
    plain = "Think: I sort in reverse order.\nAct: bash\n```bash\nsort -r x\n```"
    os_prompt = (
        "You are an assistant that will act like a person, I'will play the role of linux(ubuntu) operating system."
    )
    (out,), stats = apply(
        episode("os", os_prompt, ("user", "Sort x."), ("assistant", cites), ("user", "ok"), ("assistant", plain))
    )
    assert [m.loss for m in out.messages[-3:]] == [False, False, True]
    assert stats == {"masked:hidden_context": 1, "changed_samples": 1}
    # the same words after a turn that showed hints are no citation of hidden context
    shown = episode("os", os_prompt, ("user", "Sort x. Hint 5: sort -r sorts in reverse."), ("assistant", cites))
    assert apply(shown)[0] == [shown]
    evidence = episode(
        "db", DB_PROMPT, ("user", "q"), ("assistant", "The evidence provided says a is b.\nAction: Answer")
    )
    (out,), _ = apply(evidence, replace=True, rules={"db": {"hidden_context": r"\bevidence\b"}})
    assert isinstance(out, Filtered)  # its only supervised output cites it: nothing left to learn
    with pytest.raises(ValidationError):
        CleanOutputsConfig(rules={"db": {"rewrites": [{"pattern": "(", "replace": ""}]}})


@pytest.mark.parametrize(
    "task, cites",
    [
        ("db", "We can use the provided formula: divide the sum by the count.\nAction: Operation"),
        ("db", "The user specified that the most popular refers to the maximum of `review`.\nAction: Operation"),
        (
            "os",
            "Think: As the prompt mentioned, I need to sync history first.\n\nAct: bash\n\n```bash\nhistory -a\n```",
        ),
    ],
)
def test_other_citations_of_hidden_hints_leave_the_loss(task, cites):
    """BIRD's hidden evidence and AgentBench's hidden hints, cited in other words."""
    (out,), stats = apply(episode(task, "Solve it.", ("user", "the question"), ("assistant", cites)))
    assert isinstance(out, Filtered) and stats["masked:hidden_context"] == 1


def test_results_that_match_the_provided_answer_are_reworded():
    claim = "The results match the provided answer, so I can now commit my answer.\nAction: Answer"
    (out,), stats = apply(episode("db", DB_PROMPT, ("user", "q"), ("assistant", claim)))
    assert out.messages[-1].content == "So I can now commit my answer.\nAction: Answer"
    assert stats == {"rewritten": 1, "changed_samples": 1}


def test_a_first_output_that_claims_the_outcome_before_anything_ran_leaves_the_loss():
    """24 of the 417 DB answers open with "Record inserted successfully." above the INSERT."""
    early = "Record inserted successfully.\nAction: Operation\n```sql\nINSERT INTO `t` VALUES (1)\n```"
    after = 'The record has been inserted successfully.\nAction: Answer\nFinal Answer: ["none"]'
    one = episode("db", DB_PROMPT, ("user", "Add 1 to t."), ("assistant", early), ("user", "[]"), ("assistant", after))
    (out,), stats = apply(one)
    assert [(m.content, m.loss) for m in out.messages[4:] if m.role is Role.ASSISTANT] == [
        (early, False),
        (after, True),
    ]
    assert stats == {"masked:premature_claim": 1, "changed_samples": 1}
    planned = early.replace("Record inserted successfully.", "I insert the record.")
    calm = episode(
        "db", DB_PROMPT, ("user", "Add 1 to t."), ("assistant", planned), ("user", "[]"), ("assistant", after)
    )
    assert apply(calm)[0] == [calm]  # the claim after the result is the agent reading it

    turns = [Turn(role=m.role, text=m.content, loss=m.loss) for m in one.messages]
    trajectory = Trajectory(id=trajectory_id("a", "1", turns), source="a", source_id="1", task="db", turns=turns)
    assert "before anything ran" in claimed_too_early(trajectory)  # and it gives no instruction pair


def test_the_step_in_a_pipeline_keeps_the_ledger(tmp_path):
    def record(task: str, prompt: str, *outputs: str) -> dict:
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "OK."}]
        for output in outputs:
            turns += [{"role": "user", "content": "observation"}, {"role": "assistant", "content": output}]
        return {"conversations": turns, "task_name": task, "item_id": f"{task}_1", "reward": 1.0, "success": 1}

    records = [
        record("webshop", WEBSHOP_PROMPT, "Action:\nsearch[mug]"),
        record("textcraft", TEXTCRAFT_PROMPT, "think: a\nOK.\n\n> inventory"),
        record("babyai", "Go to the red ball.", "Action: go forward"),
    ]
    data = tmp_path / "rollouts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = write_spec(
        tmp_path,
        [
            {"id": "read", "type": "read", "config": {"format": "openai", "paths": str(data), "source": "agentgym"}},
            {"id": "chat", "type": "to_chat", "inputs": ["read"]},
            {"id": "clean", "type": "clean_outputs", "inputs": ["chat"]},
            {"id": "write", "type": "write", "inputs": ["clean"]},
        ],
    )
    summary = run(spec, tmp_path / "out")
    ledger = summary.manifest.steps["clean"]
    assert (ledger.in_, ledger.passed, ledger.filtered) == (3, 2, {"no_supervised_turn_left": 1})
    assert ledger.stats == {"changed_samples": 2, "deleted_lines": 1, "masked:missing_thought": 1}
    assert summary.manifest.ratios["clean"] == {
        "in": 3,
        "changed_samples": 2,
        "deleted_lines": 1,
        "rewritten": 0,
        "masked": {"missing_thought": 1},
        "dropped": 1,
    }
    (dropped,) = rejected(tmp_path / "out", "clean")
    assert dropped["reason"] == "no_supervised_turn_left" and "webshop" in dropped["payload"]


def test_fireact_outputs_lose_the_invented_observation_and_the_unstated_step_limit():
    reflect = (
        "Now that I haven't solved the task within 5 steps, let me do a reflection and think about how to "
        "improve my strategy.\n\nThe search result says the rule has exceptions."
    )
    one = episode(
        "fireact",
        "Question: Is hearsay admissible?",
        ("assistant", reflect),
        ("user", "Observation: ..."),
        ("assistant", "Observation: Episode finished, reward = 1"),
    )
    (out,), stats = apply(one)
    assert out.messages[-3].content == "The search result says the rule has exceptions." and out.messages[-3].loss
    assert out.messages[-1].content == "Observation: Episode finished, reward = 1" and not out.messages[-1].loss
    assert stats == {"rewritten": 1, "masked:empty_after_deletion": 1, "changed_samples": 1}
    # a sentence that is the whole thought stays (deleting it would leave the thought empty)
    alone = (
        "Thought: Now that I haven't solved the task within 9 steps, I need to wrap up and finish this task "
        "in the next step.\nAction: finish[yes]"
    )
    assert builtin_rules()["fireact"].rewrite(alone) == (alone, 0)


def chat(*turns: tuple[str, str], sid: str = "c0") -> Sample:
    """A glaive-style chat sample (no task): a system turn, then ``turns`` of (role, text) with
    every assistant turn supervised."""
    messages = [Message(role=Role.SYSTEM, content="You are a helpful assistant.")]
    messages += [Message(role=Role(role), content=text, loss=role == "assistant") for role, text in turns]
    return Sample(
        id=sid,
        kind="agent",
        messages=messages,
        lineage=Lineage(source="glaive", source_id=sid, steps=["chat"]),
        counts=count_tokens(messages),
    )


def test_a_reply_in_another_language_than_its_query_leaves_the_loss():
    # glaive zh item 116: the English answer was posted as the user's turn and "translated"
    posted = (
        'The main character of the novel "Romeo and Juliet" is Romeo Montague, a young man from a wealthy '
        "family in Verona, Italy, who falls in love with Juliet Capulet at first sight."
    )
    one = chat(
        ("user", posted),
        ("assistant", "小说《罗密欧与朱丽叶》的主要角色是罗密欧，一个年轻的蒙太古，他爱上了朱丽叶。"),
        ("user", "你能解释一下“量子计算”这个术语是什么意思吗？"),
        ("assistant", "量子计算是一种利用量子力学现象（如叠加和纠缠）对数据进行操作的计算类型。"),
        ("user", "Ruby代码实现冒泡排序算法的代码是什么？请提供逐步解释。"),
        ("assistant", "Sure, here's an implementation of the bubble sort algorithm in Ruby, step by step."),
    )
    (out,), stats = apply(one)
    assert [m.loss for m in out.messages if m.role is Role.ASSISTANT] == [False, True, False]
    assert stats == {"masked:wrong_language": 2, "changed_samples": 1}
    assert out.counts.supervised_tokens < one.counts.supervised_tokens
    assert [m.content for m in out.messages] == [m.content for m in one.messages]
    (kept,), stats = apply(one, wrong_language="keep")
    assert kept is one and stats == {}
    # a translation request is answered in the other language on purpose
    asked = chat(
        ("user", "请把这句话翻译成英文：今天天气很好，我们去公园散步吧。"),
        ("assistant", "The weather is nice today, let's go for a walk in the park."),
    )
    (same,), stats = apply(asked)
    assert same is asked and stats == {}
    # a reply whose only supervised turn is in the wrong language leaves nothing to learn
    (dropped,), _ = apply(chat(("user", posted), ("assistant", "小说《罗密欧与朱丽叶》的主要角色是罗密欧。")))
    assert isinstance(dropped, Filtered) and dropped.reason == "no_supervised_turn_left"


@pytest.mark.parametrize(
    ("code", "collapsed"),
    [
        ("def factorial(n):\n if n == 0:\n return 1\n else:\n return n * factorial(n-1)\n", True),
        ('def is_prime(n):\n """doc"""\n # comment\n if n < 2:\n return False\n', True),
        ("for i in range(3):\nprint(i)\n", True),
        ("def factorial(n):\n    if n == 0:\n        return 1\n    return n * factorial(n - 1)\n", False),
        # a block indented as a whole (inside a list item) is dedented first
        ("   import csv\n\n   with open('a.csv') as f:\n       rows = list(csv.reader(f))\n", False),
        # a placeholder body (a comment only) and fragments are not judged
        ("def create_project(name):\n    # code to create a new project\n", False),
        ("devices = jax.devices()[:2]\nwith mesh(devices, ('d',)):\n    # your code here\n", False),
        ("print('unclosed\n", False),
        ("x = [1,\n", False),
    ],
)
def test_collapsed_indentation_is_only_a_block_body_not_indented_under_its_opener(code, collapsed):
    from transforms.quality.code_blocks import collapsed_indentation, has_collapsed_python

    assert collapsed_indentation(code) is collapsed
    assert has_collapsed_python(f"Here:\n```python\n{code}```\nDone.") is collapsed
    assert not has_collapsed_python(f"Here:\n```ruby\n{code}```")  # only Python's indentation is syntax


def test_a_reply_with_python_whose_indentation_was_lost_leaves_the_loss():
    flat = (
        "Here is the function:\n```python\ndef factorial(n):\n if n == 0:\n return 1\n return n * factorial(n-1)\n```"
    )
    one = chat(
        ("user", "Write a factorial function in Python."),
        ("assistant", flat),
        ("user", "What is recursion?"),
        ("assistant", "Recursion is a function calling itself on a smaller input until a base case."),
    )
    (out,), stats = apply(one)
    assert [m.loss for m in out.messages if m.role is Role.ASSISTANT] == [False, True]
    assert stats == {"masked:collapsed_code": 1, "changed_samples": 1}
    (kept,), stats = apply(one, collapsed_code="keep")
    assert kept is one and stats == {}


def test_an_answer_that_quotes_what_the_tool_never_returned_leaves_the_loss():
    """glaive's zh demos were translated turn by turn: the tool's 笨蛋与更笨的人 is quoted as
    “阿呆与阿瓜”. A verbatim quote, a JSON answer's quote, the user's words re-joined, an escaped
    quote inside a JSON list and a protocol word stay supervised."""
    result = '{"movies": [{"title": "笨蛋与更笨的人", "year": 1994}, {"title": "宠物侦探艾斯", "year": 1994}]}'
    one = chat(
        ("user", "我在找一部90年代的喜剧电影。"),
        ("tool", result),
        ("assistant", "我找到了：1994年的“阿呆与阿瓜”和“宠物侦探艾斯”。"),
        ("user", "谢谢，第二部呢？"),
        ("tool", result),
        ("assistant", "第二部是《宠物侦探艾斯》，1994年上映。"),
    )
    (out,), stats = apply(one)
    assert [m.loss for m in out.messages if m.role is Role.ASSISTANT] == [False, True]
    assert stats == {"masked:misquoted_result": 1, "changed_samples": 1}
    (kept,), stats = apply(one, misquoted_result="keep")
    assert kept is one and stats == {}
    fine = chat(
        ("user", 'How often does the pair "àbac" "xinès" occur? Title of "Howard Miller 13" Clock"?'),
        ("tool", '[(4,)] and "Pitch Perfect 2"'),
        ("assistant", '{"answer": "The pair \\"àbac xinès\\" occurs 4 times; see \\"Pitch Perfect 2\\"."}'),
        ("tool", "[]"),
        ("assistant", 'Final Answer: ["none"] and ["Howard Miller 13\\" Clock"]'),
    )
    assert apply(fine)[0] == [fine]


def test_an_action_the_environment_answers_with_an_error_leaves_the_loss():
    db = (
        "I am a helpful assistant. Use MySQL. Your response should use the following format:\n\n"
        "Action: Operation\n```sql\nSELECT * FROM table WHERE condition;\n```"
    )
    one = episode(
        "db",
        db,
        (
            "assistant",
            "Action: Operation\n```sql\nSELECT COUNT(*) FROM `posts` p WHERE YEAR(p.CreationDate) = 2010;\n```",
        ),
        ("user", "1054 (42S22): Unknown column 'p.CreationDate' in 'where clause'"),
        (
            "assistant",
            "Action: Operation\n```sql\nSELECT COUNT(*) FROM `posts` p WHERE YEAR(p.CreaionDate) = 2010;\n```",
        ),
        ("user", "[(5,)]"),
        ("assistant", 'Action: Answer\nFinal Answer: ["5"]'),
    )
    (out,), stats = apply(one)
    assert [m.loss for m in out.messages if m.role is Role.ASSISTANT][1:] == [False, True, True]
    assert stats == {"masked:failed_action": 1, "changed_samples": 1}
    # KG's "cannot be executed" and OS's "command not found" are failures too; an error text in
    # the task or in a later answer is not an answer to the output before it
    assert builtin_rules()["kg"].failed.search("get_relations(Apple) cannot be executed. You may make a mistake")
    assert builtin_rules()["os"].failed.search("The output of the OS:  bash: bc: command not found\r 0\r")
    assert not builtin_rules()["os"].failed.search("The output of the OS:  4 files found")


def test_a_query_mysql_cannot_run_as_written_leaves_the_loss_and_gives_no_pair():
    from schemas import Trajectory, Turn
    from transforms.instruction_pairs import output_rules_screening

    db = "I am a helpful assistant. Use MySQL."
    bad = (
        "Action: Operation\n```sql\nSELECT COUNT(*) FROM `posts` JOIN `users` ON `posts.OwnerUserId` = `users.Id`;\n```"
    )
    prose = (
        "To join `country.Code` with `borders.Country1`, I query both tables.\nAction: Operation\n"
        "```sql\nSELECT `country`.`Name` FROM `country` JOIN `borders` ON `country`.`Code` = `borders`.`Country1`;\n```"
    )
    one = episode("db", db, ("assistant", bad), ("user", "[(3,)]"), ("assistant", prose), ("user", "[('France',)]"))
    (out,), stats = apply(one)
    assert [m.loss for m in out.messages if m.role is Role.ASSISTANT][1:] == [False, True]
    assert stats == {"masked:malformed_action": 1, "changed_samples": 1}
    turns = [Turn(role=Role.USER, text=db), Turn(role=Role.ASSISTANT, text=bad, loss=True)]
    trajectory = Trajectory(id="t", source="agentinstruct", source_id="db_1", task="db", turns=turns)
    reason, detail = output_rules_screening(trajectory)
    assert reason == "malformed_action" and "`posts.OwnerUserId`" in detail
    # SQLite's functions, which MySQL does not have, in a statement (not in prose)
    malformed = builtin_rules()["db"].malformed
    assert malformed.search("```sql\nSELECT STRFTIME('%Y', t1.orderDate) FROM `orders` AS t1\n```")
    assert malformed.search("SELECT CAST(SUM(IIF(`race` = 'W', 1, 0)) AS REAL) FROM `officers`")
    assert malformed.search("SELECT AVG(julianday(end) - julianday(start)) FROM trips")
    assert not malformed.search("SELECT YEAR(t1.orderDate), IF(`race` = 'W', 1, 0) FROM `orders` AS t1")
    assert not malformed.search("MySQL has no strftime(), so I use DATE_FORMAT.\nSELECT DATE_FORMAT(d, '%Y') FROM t")
