"""The align step: structure, loss flags, tool-call preservation, keep-format, templates, real data."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from schemas import Role, Sample, ToolCall, ToolSpec, Trajectory, Turn, trajectory_id
from tests.conftest import DEMO_DATA
from tests.helpers import parse_file
from transforms.align import Align, AlignConfig, describe_parameters, quota_threshold
from transforms.base import Filtered, RecordError, StepContext
from transforms.phrasing import PhrasingError
from transforms.react import has_markers, parse_turn
from transforms.reward_filter import RewardFilterConfig, judge
from transforms.sampling import rank_key
from transforms.tool_cards import CardFileError, ToolCardError, load_cards, validate_call

GOLDEN = Path(__file__).parent / "golden" / "align"


def aligner(tmp_path: Path | None = None, **config):
    config.setdefault("keep_format_share", 0.0)
    context = StepContext(step_id="align", base_dir=str(tmp_path or "."))
    step = Align(config, context)
    step.check()
    return step.processor()


def outputs(fn, trajectory) -> list[Sample]:
    return [o for o in fn(trajectory) if isinstance(o, Sample)]


def trajectory(*turns: tuple[str, str, bool], tools=(), task=None, source="t") -> Trajectory:
    built = [Turn(role=Role(r), text=t, loss=loss) for r, t, loss in turns]
    return Trajectory(
        id=trajectory_id(source, "1", built), source=source, source_id="1", task=task, turns=built, tools=list(tools)
    )


def shape(sample: Sample) -> list[tuple[str, str | None, bool]]:
    return [(m.role.value, m.part, m.loss) for m in sample.messages]


def test_react_step_becomes_thought_tool_and_arguments_turns():
    traj = trajectory(
        ("user", "Find a cat fact.", False),
        ("assistant", 'Thought: call the API.\nAction: get_fact\nAction Input: {"animal": "cat"}', True),
        ("tool", '{"fact": "cats nap"}', False),
        ("assistant", "Thought: done.\nFinal Answer: cats nap", True),
        tools=[
            ToolSpec(
                name="get_fact",
                description="A fact",
                parameters={"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"]},
            )
        ],
    )
    (sample,) = outputs(aligner(), traj)
    assert shape(sample) == [
        ("system", None, False),
        ("user", None, False),
        ("assistant", "thought", True),
        ("assistant", "tool", True),  # the decision, in the same assistant turn as the thought
        ("user", "elicit", False),  # only the arguments are asked for
        ("assistant", "arguments", True),
        ("tool", None, False),
        ("assistant", "thought", True),
        ("assistant", "answer", True),
    ]
    messages = sample.messages
    assert "get_fact" in messages[0].content and "animal (string, required)" in messages[0].content
    assert messages[2].content == "call the API."
    assert "get_fact" in messages[3].content
    assert json.loads(messages[5].content) == {"animal": "cat"}
    assert messages[5].tool_calls[0] == ToolCall(name="get_fact", arguments={"animal": "cat"})
    assert messages[6].content == '{"fact": "cats nap"}'  # observations are untouched
    assert "cats nap" in messages[8].content
    assert not any(has_markers(m.content) for m in messages if m.role is Role.ASSISTANT)
    assert sample.lineage.derivation == "align" and sample.kind == "agent"


def test_loss_false_example_turns_stay_unsupervised():
    traj = trajectory(
        ("user", "instructions", False),
        ("assistant", "Think: example.\n\nAct: bash\n\n```bash\nls\n```", False),
        ("user", "The output of the OS:\na b", False),
        ("assistant", "Think: real.\n\nAct: answer(2)", True),
        task="os",
    )
    (sample,) = outputs(aligner(), traj)
    assert sample.messages[0].role is Role.SYSTEM and "bash" in sample.messages[0].content
    example = sample.messages[2:6]
    assert [m.part for m in example if m.role is Role.ASSISTANT] == ["thought", "tool", "arguments"]
    assert not any(m.loss for m in example)
    assert [m.loss for m in sample.messages if m.role is Role.ASSISTANT][-3:] == [True, True, True]
    assert sample.messages[-1].tool_calls[0] == ToolCall(
        name="answer", arguments={"answer": "2"}
    )  # the OS card's final tool
    assert not any(m.loss for m in sample.messages if m.role is not Role.ASSISTANT)


def test_step_without_thought_needs_no_elicitation():
    traj = trajectory(
        ("user", "go", False),
        ("assistant", "ACTION: open drawer 1", True),
        ("user", "It is open.", False),
        task="alfworld",
    )
    (sample,) = outputs(aligner(), traj)
    assert shape(sample) == [
        ("system", None, False),
        ("user", None, False),
        ("assistant", "tool", True),
        ("user", "elicit", False),
        ("assistant", "arguments", True),
        ("user", None, False),
    ]
    assert sample.messages[4].tool_calls[0] == ToolCall(name="open", arguments={"receptacle": "drawer 1"})


def test_unparseable_step_is_a_dead_letter_or_kept_unaligned():
    traj = trajectory(("user", "q", False), ("assistant", 'Thought: x\nAction: f\nAction Input: {"a": ', True))
    with pytest.raises(RecordError) as info:
        outputs(aligner(), traj)
    assert info.value.reason == "unparseable_step" and "Action Input is not valid JSON" in info.value.detail
    assert """'{"a":'""" in info.value.detail  # the offending text is in the dead letter
    (kept,) = outputs(aligner(on_unparseable="keep_unaligned"), traj)
    assert kept.lineage.derivation == "unaligned"
    assert [m.content for m in kept.messages] == [t.text for t in traj.turns]


def test_keep_format_share_is_deterministic_and_keeps_text():
    agent = [t for t in parse_file(DEMO_DATA / "agentinstruct_sample.jsonl", "agentinstruct")[0]]
    fn = aligner(keep_format_share=0.5)
    first = [outputs(fn, t)[0] for t in agent * 1]
    again = [outputs(aligner(keep_format_share=0.5), t)[0] for t in agent]
    assert first == again
    kept = [s for s in first if s.lineage.derivation == "keep_format"]
    everything = [outputs(aligner(keep_format_share=1.0), t)[0] for t in agent]
    assert all(s.lineage.derivation == "keep_format" for s in everything)
    for sample, traj in zip(everything, agent, strict=True):
        assert [m.content for m in sample.messages] == [t.text for t in traj.turns]
        assert [m.loss for m in sample.messages] == [t.loss for t in traj.turns]
    assert {m.part for s in everything for m in s.messages if m.role is Role.ASSISTANT} <= {"react", "prose"}
    assert kept or len(agent) < 4


def test_phrasings_vary_across_samples_but_not_across_runs(external):
    trajs = []
    for path in sorted(glob.glob(str(external("agentinstruct_thudm") / "webshop*.parquet"))):
        trajs += parse_file(path, "agentinstruct")[0][:60]
    fn = aligner()
    elicits = Counter(m.content for t in trajs for m in outputs(fn, t)[0].messages if m.part == "elicit")
    assert len(elicits) >= 5  # several phrasings are in use
    assert elicits == Counter(m.content for t in trajs for m in outputs(aligner(), t)[0].messages if m.part == "elicit")


def test_user_templates_override_slots(tmp_path):
    (tmp_path / "mine.yaml").write_text('tool: ["TOOL={{ tool }}"]\nelicit_continue: ["more?"]\n')
    traj = trajectory(("user", "q", False), ("assistant", "Thought: t\nAction: search[x]", True), source="fireact")
    (sample,) = outputs(aligner(tmp_path, templates="mine.yaml"), traj)
    assert [m.content for m in sample.messages[3:5]] == ["TOOL=search", "more?"]


GET_FACT = ToolSpec(
    name="get_fact",
    description="A fact",
    parameters={"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"]},
)


def call_and_answer(question: str, answer: str) -> Trajectory:
    return trajectory(
        ("user", question, False),
        ("assistant", 'Action: get_fact\nAction Input: {"animal": "cat"}', True),
        ("tool", '{"fact": "cats nap"}', False),
        ("assistant", f"Final Answer: {answer}", True),
        tools=[GET_FACT],
        source="glaive",
    )


def generated(sample: Sample) -> list[str]:
    """The phrase book's turns of a sample (the tool name taken out)."""
    parts = ("tool", "elicit", "answer", "finish")
    return [m.content.replace("get_fact", "") for m in sample.messages if m.part in parts]


def test_a_chinese_task_gets_the_chinese_wording_of_every_generated_turn():
    fn = aligner()
    chinese, english = Counter(), Counter()
    for n in range(12):  # twelve keyed-hash draws of each slot
        (zh,) = outputs(fn, call_and_answer(f"你好，请告诉我一个关于猫的事实，第{n}次。", "猫每天要睡很久。"))
        (en,) = outputs(fn, call_and_answer(f"Hello, tell me a fact about cats, take {n}.", "Cats nap a lot."))
        assert len(generated(zh)) == len(generated(en)) == 3  # tool, elicit, answer
        for text in generated(zh):
            assert not re.search(r"[A-Za-z]", text), text  # no English around the tool name
            chinese[text] += 1
        for text in generated(en):
            assert not re.search(r"[\u4e00-\u9fff]", text), text
            english[text] += 1
        assert "猫每天要睡很久。" in generated(zh)[-1]  # a sentence answer is said as it is
    assert len(chinese) >= 6 and len(english) >= 6  # several variants of each language are drawn


def test_language_slots_of_a_user_book(tmp_path):
    (tmp_path / "mine.yaml").write_text('zh.tool: ["用{{ tool }}"]\nfr.elicit_continue: ["Continuez."]\n')
    fn = aligner(tmp_path, templates="mine.yaml")
    (zh,) = outputs(fn, call_and_answer("你好，请告诉我一个关于猫的事实。", "猫每天要睡很久。"))
    assert generated(zh)[0] == "用"  # the user's zh.tool; the built-in zh slots it does not give stay
    french = "Bonjour, pourriez-vous me donner un fait intéressant sur les chats, s'il vous plaît ?"
    (fr,) = outputs(fn, call_and_answer(french, "Les chats dorment beaucoup."))
    assert generated(fr)[1] == "Continuez."  # told by the language model: French is not a CJK script
    assert not re.search(r"[\u4e00-\u9fff]", generated(fr)[0])  # French has no tool slot: the default's
    (tmp_path / "bogus.yaml").write_text('zh.tools: ["x"]\n')
    with pytest.raises(PhrasingError, match=r"unknown slots zh\.tools"):
        aligner(tmp_path, templates="bogus.yaml")
    (tmp_path / "wrong.yaml").write_text('zh.tool: ["{{ answer }}"]\n')
    with pytest.raises(PhrasingError, match=r"slot .zh.tool.*undefined"):
        aligner(tmp_path, templates="wrong.yaml")


@pytest.mark.parametrize("slot", ["elicit_tool", "elicit_arguments", "elicit_answer"])
def test_phrase_books_with_removed_slots_fail_with_an_explanation(tmp_path, slot):
    (tmp_path / "old.yaml").write_text(f'{slot}: ["Which tool will you use?"]\n')
    with pytest.raises(PhrasingError, match=rf"{slot}.*no longer exist.*elicit_continue"):
        aligner(tmp_path, templates="old.yaml")


@pytest.mark.parametrize(
    "template",
    [
        "{{ tool.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_templates_that_reach_python_internals_are_refused(tmp_path, template):
    (tmp_path / "evil.yaml").write_text(json.dumps({"tool": [template]}))
    with pytest.raises(PhrasingError, match=r"sandbox|undefined"):
        aligner(tmp_path, templates="evil.yaml")


def test_broken_template_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("tool: [unclosed\n")
    with pytest.raises(PhrasingError, match="invalid YAML"):
        aligner(tmp_path, templates="bad.yaml")
    with pytest.raises(PhrasingError, match="cannot read templates"):
        aligner(tmp_path, templates="absent.yaml")
    (tmp_path / "syntax.yaml").write_text('tool: ["{{ tool "]\n')
    with pytest.raises(PhrasingError, match="slot 'tool'"):
        aligner(tmp_path, templates="syntax.yaml")
    (tmp_path / "unknown.yaml").write_text('tools: ["x"]\n')
    with pytest.raises(PhrasingError, match="unknown slots tools"):
        aligner(tmp_path, templates="unknown.yaml")
    (tmp_path / "wrong_variable.yaml").write_text('tool: ["{{ answer }}"]\n')  # 'tool' gets no answer
    with pytest.raises(PhrasingError, match=r"slot .tool.*undefined"):
        aligner(tmp_path, templates="wrong_variable.yaml")


def test_sentence_answers_are_said_as_they_are():
    traj = trajectory(
        ("user", "q", False), ("assistant", "Thought: found.\nAction: finish[It snows in Oslo today.]", True)
    )
    (sample,) = outputs(aligner(), traj)
    assert "It snows in Oslo today." in sample.messages[-1].content
    assert "answer is It" not in sample.messages[-1].content


def test_describe_parameters():
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City"}, "days": {"type": "integer"}},
        "required": ["city"],
    }
    assert describe_parameters(schema) == "city (string, required): City; days (integer)"
    assert describe_parameters({}) == "" and describe_parameters(None) == ""


# --- real data ----------------------------------------------------------------------------------


def aligned_calls(sample: Sample) -> list[ToolCall]:
    return [c for m in sample.messages if m.part == "arguments" for c in m.tool_calls]


#: AgentInstruct trajectories whose actions fit no declared tool (ALFWorld "Task failed." / "end
#: task", KG get_entities_of_type / delete_entities or one-argument get_neighbors, Mind2Web
#: SET / HOVER / "CLICK on <...>" or a click with a value): filtered with the reason; and DB
#: calls with a value nobody gave (an INSERT of johndoe@example.com; an UPDATE for "the date of
#: March 20th" at 2022-03-20, an INSERT of new hires dated 2022).
AGENTINSTRUCT_FILTERED = {"undeclared_tool": 19, "invalid_arguments": 4, "ungrounded_argument": 3}


@pytest.mark.real_data
def test_all_agentinstruct_trajectories_align_and_keep_every_tool_call(external):
    fn = aligner()
    count = 0
    filtered: Counter = Counter()
    for path in sorted(glob.glob(str(external("agentinstruct_thudm") / "*.parquet"))):
        for traj in parse_file(path, "agentinstruct")[0]:
            produced = list(fn(traj))  # raises on a dead letter
            drops = [o for o in produced if isinstance(o, Filtered)]
            if drops:
                filtered[drops[0].reason] += 1
                continue
            (sample,) = [o for o in produced if isinstance(o, Sample)]
            count += 1
            messages = sample.messages
            assert not any(has_markers(m.content) for m in messages if m.role is Role.ASSISTANT)
            assert not any(has_markers(m.content) for m in messages if m.role in (Role.SYSTEM, Role.USER))
            source_steps = [s for t in traj.turns if t.role is Role.ASSISTANT for s in parse_turn(t)]
            calls = aligned_calls(sample)
            assert len(calls) == sum(1 for s in source_steps if s.call) + sum(
                1 for s in source_steps if s.finished and traj.task in ("os", "db")
            )
            declared = {t.name for t in sample.tools}
            assert messages[0].role is Role.SYSTEM and all(name in messages[0].content for name in declared)
            for i, message in enumerate(messages):
                if message.part == "arguments":
                    assert json.loads(message.content) == message.tool_calls[0].arguments
                    assert messages[i - 2].part == "tool" and message.tool_calls[0].name in messages[i - 2].content
                    validate_call(message.tool_calls[0], sample.tools)  # declared, and the schema holds
            supervised_source = sum(t.loss for t in traj.turns if t.role is Role.ASSISTANT)
            assert (supervised_source == 0) == (not any(m.loss for m in messages))
            assert not any(m.loss for m in messages if m.role is not Role.ASSISTANT)
    assert count + sum(filtered.values()) == 1465
    assert filtered == AGENTINSTRUCT_FILTERED


def user_turn_before_each_decision(sample: Sample) -> list[tuple[str, str]]:
    """(generated user turn or NO_ELICITATION, 'call' | 'answer') before each assistant decision
    of a sample: the first tool choice or answer of a run of assistant messages after a user turn."""
    out = []
    messages = sample.messages
    for i, message in enumerate(messages):
        if message.role is not Role.ASSISTANT or messages[i - 1].role is not Role.USER:
            continue
        block = []
        for later in messages[i:]:
            if later.role is not Role.ASSISTANT:
                break
            block.append(later)
        decision = next((m.part for m in block if m.part in ("tool", "answer", "prose")), None)
        if decision is not None:
            before = messages[i - 1]
            text = before.content if before.part == "elicit" else NO_ELICITATION
            out.append((text, "call" if decision == "tool" else "answer"))
    return out


#: The value of a decision point preceded by the task or an observation rather than a generated
#: turn (the audit's decision_leak does the same: the environment's state should inform the
#: decision; only what align writes can give it away).
NO_ELICITATION = "<no elicitation>"


def decision_leak(points: list[tuple[str, str]]) -> float:
    """(leave-one-out accuracy of the decision from the exact text - base rate) / (1 - base rate)."""
    totals = Counter(d for _, d in points)
    majority, top = totals.most_common(1)[0]
    base = top / len(points)
    by_text: dict[str, Counter] = {}
    for text, decision in points:
        by_text.setdefault(text, Counter())[decision] += 1
    right = 0
    for text, decision in points:
        others = by_text[text].copy()
        others[decision] -= 1
        ranked = others.most_common()
        guess = (
            majority
            if not ranked or ranked[0][1] == 0 or (len(ranked) > 1 and ranked[0][1] == ranked[1][1])
            else ranked[0][0]
        )
        right += guess == decision
    return max(0.0, (right / len(points) - base) / (1 - base)) if base < 1 else 0.0


@pytest.mark.real_data
@pytest.mark.parametrize("decision", ["with_thought", "after_continue"])
def test_elicitation_does_not_give_the_decision_away(external, decision):
    fn = aligner(decision=decision)
    points, samples = [], []
    for path in sorted(glob.glob(str(external("agentinstruct_thudm") / "*.parquet"))):
        for traj in parse_file(path, "agentinstruct")[0]:
            if judge(traj, VALID_ACTIONS).violations:
                continue  # the recipe filters these first (KG "No executable function found")
            for sample in outputs(fn, traj):
                samples.append(sample)
                points += user_turn_before_each_decision(sample)
    elicited = [(text, d) for text, d in points if text != NO_ELICITATION]
    assert decision_leak(points) <= 0.05 and Counter(d for _, d in points)["answer"] > 100
    if decision == "with_thought":
        # decisions follow the task or an observation, not a prompt (but for a second action in one
        # source turn, after the first one's arguments)
        assert len(elicited) <= len(points) / 1000
        for sample in samples:  # a thought is followed by its decision, in the same assistant turn
            for i, message in enumerate(sample.messages[:-1]):
                if message.part == "thought":
                    assert sample.messages[i + 1].role is Role.ASSISTANT
    else:  # the same wordings precede calls and answers
        assert decision_leak(elicited) <= 0.05
        for d in ("call", "answer"):
            assert {t for t, x in elicited if x == d} == set(ELICITATIONS)


VALID_ACTIONS = RewardFilterConfig(checks=["invalid_action"])
ELICITATIONS = ["Go on.", "Continue.", "Please continue.", "OK, go ahead.", "Next?", "Carry on."]


# Golden tests: one real row per dialect -> the exact aligned conversation. The expected files hold
# the structure and a sha256 of each message (no data is copied into the repository); regenerate
# with AGENTMILL_UPDATE_GOLDEN=1 after an intended change, and review the diff of the structure.
GOLDEN_CASES = {
    "os": ("agentinstruct_thudm/os.shared80.parquet", "agentinstruct", {}, 3),
    "db": ("agentinstruct_thudm/db.shared80.parquet", "agentinstruct", {}, 3),
    "alfworld": ("agentinstruct_thudm/alfworld.shared80.parquet", "agentinstruct", {}, 3),
    "webshop": ("agentinstruct_thudm/webshop.shared80.parquet", "agentinstruct", {}, 3),
    "kg": ("agentinstruct_thudm/kg.shared80.parquet", "agentinstruct", {}, 3),
    "mind2web": ("agentinstruct_thudm/mind2web.shared80.parquet", "agentinstruct", {}, 2),
    "toolbench": (
        "toolbench_openbmb/data_example/answer/G1_answer/10_ChatGPT_DFS_woFilter_w2.json",
        "openai",
        {
            "messages_field": "answer_generation.train_messages.-1",
            "tools_field": "answer_generation.function",
            "task": "toolbench",
        },
        0,
    ),
    "glaive": ("llamafactory_glaive_toolcall/glaive_toolcall_en_demo.shared80.json", "sharegpt", {"task": "glaive"}, 0),
    "fireact": ("fireact/data/finetune/gpt_format/hotpotqa.jsonl", "openai", {"task": "fireact"}, 0),
    "babyai": ("agentgym_agenttraj_l/babyai_train.json", "agentinstruct", {}, 0),
}


def fingerprint(sample: Sample) -> dict:
    return {
        "source_id": sample.lineage.source_id,
        "messages": [
            {
                "role": m.role.value,
                "part": m.part,
                "loss": m.loss,
                "tool": m.tool_calls[0].name if m.tool_calls else None,
                "sha256": hashlib.sha256(m.content.encode()).hexdigest()[:16],
            }
            for m in sample.messages
        ],
    }


@pytest.mark.real_data
@pytest.mark.parametrize("dialect", sorted(GOLDEN_CASES))
def test_golden_alignment_per_dialect(external, dialect):
    relative, fmt, config, index = GOLDEN_CASES[dialect]
    traj = parse_file(external(*relative.split("/")), fmt, **config)[0][index]
    (sample,) = outputs(aligner(), traj)
    got = fingerprint(sample)
    path = GOLDEN / f"{dialect}.json"
    if os.environ.get("AGENTMILL_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1) + "\n")
    expected = json.loads(path.read_text())
    assert got == expected
    assert any(m["part"] == "arguments" for m in got["messages"])


def test_system_keep_makes_one_system_message():
    tools = [ToolSpec(name="f", description="does f")]
    traj = trajectory(
        ("system", "Be brief.", False),
        ("user", "q", False),
        ("assistant", "Thought: t\nAction: f[x]", True),
        tools=tools,
    )
    (kept,) = outputs(aligner(system="keep"), traj)
    assert [m.role.value for m in kept.messages].count("system") == 1
    assert kept.messages[0].content.startswith("Be brief.\n\n") and "does f" in kept.messages[0].content
    (replaced,) = outputs(aligner(), traj)
    assert "Be brief." not in replaced.messages[0].content


# --- kept-format share per source -----------------------------------------------------------------


def test_keep_format_share_is_per_source():
    trajs = [
        trajectory(
            ("user", f"q{i}", False),
            ("assistant", "Thought: t\nAction: search[x]", True),
            source=source,
            tools=[ToolSpec(name="search")],
        )
        for i in range(40)
        for source in ("toolbench", "fireact")
    ]
    fn = aligner(keep_format_share={"toolbench": 1.0})
    derivations = Counter((t.source, outputs(fn, t)[0].lineage.derivation) for t in trajs)
    assert derivations == {("toolbench", "keep_format"): 40, ("fireact", "align"): 40}
    config = AlignConfig(keep_format_share={"toolbench": 0.1, "*": 0.5})
    assert (config.keep_share_of("toolbench"), config.keep_share_of("other")) == (0.1, 0.5)
    assert AlignConfig().keep_share_of("toolbench") == 0.1 and AlignConfig().keep_share_of("glaive") == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AlignConfig(keep_format_share={"toolbench": 1.5})


def test_quota_threshold_keeps_the_nearest_count_of_the_lowest_ranks():
    keys = [rank_key(0, "align", f"k{i}") for i in range(9)]
    for share, count in ((0.1, 1), (0.0, 0), (0.5, 5), (1.0, 9), (0.04, 0)):
        threshold = quota_threshold(keys, share)
        assert sum(1 for k in keys if threshold is not None and k <= threshold) == count


# --- tool cards ------------------------------------------------------------------------------------


def card_call(task: str, name: str, arguments) -> ToolCall:
    traj = trajectory(("user", "q", False), task=task)
    card = load_cards().card_for(traj)
    return card.to_call(ToolCall(name=name, arguments=arguments), card.tools_for(traj))


@pytest.mark.parametrize(
    ("task", "name", "arguments", "expected"),
    [
        ("alfworld", "go to", {"target": "desk 1"}, ToolCall(name="go_to", arguments={"receptacle": "desk 1"})),
        (
            "alfworld",
            "take",
            {"target": "laptop 1 from diningtable 1"},
            ToolCall(name="take", arguments={"object": "laptop 1", "receptacle": "diningtable 1"}),
        ),
        (
            "alfworld",
            "put",
            {"target": "laptop 1 in/on bed 1"},
            ToolCall(name="put", arguments={"object": "laptop 1", "receptacle": "bed 1"}),
        ),
        ("alfworld", "inventory", {}, ToolCall(name="inventory", arguments={})),
        (
            "kg",
            "get_neighbors",
            {"input": "Barack Obama, people.person.profession"},
            ToolCall(
                name="get_neighbors", arguments={"variable": "Barack Obama", "relation": "people.person.profession"}
            ),
        ),
        (
            "kg",
            "intersection",
            {"input": "#0, #1"},
            ToolCall(name="intersection", arguments={"variable1": "#0", "variable2": "#1"}),
        ),
        ("webshop", "click", {"input": "Buy Now"}, ToolCall(name="click", arguments={"button": "Buy Now"})),
        (
            "mind2web",
            "TYPE.",
            {"element": "C", "value": "11101"},
            ToolCall(name="type", arguments={"element": "C", "value": "11101"}),
        ),
        ("os", "bash", {"script": "ls"}, ToolCall(name="bash", arguments={"script": "ls"})),
        ("db", "operation", {"query": "SELECT 1"}, ToolCall(name="sql", arguments={"query": "SELECT 1"})),
        (
            "babyai",
            "toggle",
            {"target": "and go through red door 1"},
            ToolCall(name="toggle_and_go_through", arguments={"door": "red door 1"}),
        ),
        ("babyai", "toggle", {}, ToolCall(name="toggle", arguments={})),
    ],
)
def test_tool_cards_turn_parsed_actions_into_schema_valid_calls(task, name, arguments, expected):
    call = card_call(task, name, arguments)
    assert call == expected


@pytest.mark.parametrize(
    ("task", "name", "arguments", "reason"),
    [
        ("alfworld", "Task", {"target": "failed."}, "undeclared_tool"),
        ("kg", "get_neighbors", {"input": "Unit of Energy"}, "invalid_arguments"),
        ("mind2web", "CLICK", {"element": "C", "value": "x"}, "invalid_arguments"),
        ("mind2web", "HOVER", {"element": "E"}, "undeclared_tool"),
    ],
)
def test_tool_cards_refuse_calls_that_fit_no_declared_tool(task, name, arguments, reason):
    with pytest.raises(ToolCardError) as info:
        card_call(task, name, arguments)
    assert info.value.reason == reason and info.value.detail


def test_tool_cards_final_calls_and_own_tools():
    cards = load_cards()
    os_traj = trajectory(("user", "q", False), task="os")
    card = cards.card_for(os_traj)
    tools = card.tools_for(os_traj)
    assert [t.name for t in tools] == ["bash", "answer", "finish"]
    assert [t.name for t in card.tools_for(os_traj, finals=False)] == ["bash"]
    assert card.final_call("220", tools) == ToolCall(name="answer", arguments={"answer": "220"})
    assert card.final_call(None, tools) == ToolCall(name="finish", arguments={})
    kg = trajectory(("user", "q", False), task="kg")
    assert cards.card_for(kg).final_call("#3", cards.card_for(kg).tools_for(kg)) is None  # prose answer
    # a typed answer parameter takes the answer's JSON value: DB-Bench's list is a list, not a
    # string holding a list's JSON; an answer that is no JSON of that type is invalid_arguments
    db = trajectory(("user", "q", False), task="db")
    db_card, db_tools = cards.card_for(db), cards.card_for(db).tools_for(db)
    assert db_card.final_call(' ["Summer", 6923] ', db_tools) == ToolCall(
        name="answer", arguments={"answer": ["Summer", 6923]}
    )
    assert db_card.final_call("[2.175]", db_tools).arguments == {"answer": [2.175]}
    with pytest.raises(ToolCardError, match="invalid_arguments"):
        db_card.final_call("Summer", db_tools)  # no JSON
    with pytest.raises(ToolCardError, match="invalid_arguments"):
        db_card.final_call('{"season": "Summer"}', db_tools)  # JSON, but no list
    own = trajectory(
        ("user", "q", False),
        source="glaive",
        tools=[ToolSpec(name="f", parameters={"type": "object", "properties": {"a": {"type": "integer"}}})],
    )
    card = cards.card_for(own)
    assert card.own_tools and card.tools_for(own) == own.tools
    assert card.to_call(ToolCall(name="f", arguments={"a": 1}), own.tools).name == "f"
    with pytest.raises(ToolCardError, match="invalid_arguments"):
        card.to_call(ToolCall(name="f", arguments={"a": "x"}), own.tools)
    with pytest.raises(ToolCardError, match="undeclared_tool"):
        validate_call(ToolCall(name="g"), own.tools)
    assert cards.card_for(trajectory(("user", "q", False))) is None


def test_tool_cards_remove_the_environments_format_prompt():
    db = trajectory(
        (
            "user",
            "I will ask you a question, then you should help me operate a MySQL database with SQL.\nAction: Operation",
            False,
        ),
        ("assistant", "Ok.", False),
        ("user", "How many rows?", False),
        ("assistant", "Action: Operation\n```sql\nSELECT COUNT(*) FROM t\n```", True),
        task="db",
    )
    turns = load_cards().card_for(db).prompt_turns(db.turns)
    assert [t.text for t in turns][:1] == ["How many rows?"] and len(turns) == 2
    os_traj = trajectory(
        ("user", "take exact one of the three actions ... Now, my problem is:\n\ncount files in /etc?", False),
        task="os",
    )
    assert [t.text for t in load_cards().card_for(os_traj).prompt_turns(os_traj.turns)] == ["count files in /etc?"]
    toolbench = trajectory(
        ("system", "You are AutoGPT ... ALWAYS call Finish ...", False),
        ("user", "Find a cocktail.\nBegin!\n", False),
        ("user", "This is not the first time you try this task, all previous trails failed.", False),
        source="toolbench",
    )
    assert [t.text for t in load_cards().card_for(toolbench).prompt_turns(toolbench.turns)] == ["Find a cocktail."]


def test_user_tool_cards_replace_builtins_and_bad_cards_are_clear_errors(tmp_path):
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "webshop.yaml").write_text(
        "card: webshop\nmatch: {tasks: [webshop]}\ntools:\n"
        "  - {name: search, pattern: '(?P<q>.+)', parameters: {type: object, properties: {q: {type: string}}}}\n"
    )
    cards = load_cards("cards", str(tmp_path))
    traj = trajectory(("user", "q", False), task="webshop")
    assert [t.name for t in cards.card_for(traj).tools_for(traj)] == ["search"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.yaml").write_text(
        "card: x\nmatch: {tasks: [x]}\ntools: [{name: f, parameters: {type: 3}}]\n"
    )
    with pytest.raises(CardFileError, match="not a valid JSON Schema"):
        load_cards("bad", str(tmp_path))
    (tmp_path / "bad" / "x.yaml").write_text("card: x\nmatch: {tasks: [x]}\ntools: [{name: f, oops: 1}]\n")
    with pytest.raises(CardFileError, match="oops"):
        load_cards("bad", str(tmp_path))
    with pytest.raises(ValueError, match="tool cards"):
        aligner(tmp_path, tool_cards="absent")


def test_a_tool_schema_with_python_type_names_is_a_reason_not_a_crash():
    # reason_tool_use declares parameters as {"type": "dict", "properties": {"year": {"type": "int"}}};
    # jsonschema raises UnknownType while validating, which align once reported as unexpected_error
    tools = [ToolSpec(name="gdp", parameters={"type": "dict", "properties": {"year": {"type": "int"}}})]
    with pytest.raises(ToolCardError) as info:
        validate_call(ToolCall(name="gdp", arguments={"year": 2020}), tools)
    assert info.value.reason == "invalid_arguments" and "unknown type 'dict'" in info.value.detail


def test_a_conversation_without_tools_gets_no_tool_header_and_no_promise_of_functions():
    fn = aligner()
    chat = (("user", "What is an abstract data type?", False), ("assistant", "A type defined by its behaviour.", True))
    without = outputs(fn, trajectory(*chat, source="glaive"))[0]
    system = without.messages[0]
    assert system.role is Role.SYSTEM and without.tools == []
    assert system.content == load_cards().card_for(trajectory(*chat, source="glaive")).instruction_for([])
    assert "no functions are available" in system.content.lower()
    assert "tools" not in system.content.lower() and "call a function" not in system.content.lower()
    tool = ToolSpec(name="get_fact", description="A fact", parameters={"type": "object", "properties": {}})
    with_tools = outputs(fn, trajectory(*chat, source="glaive", tools=[tool]))[0]
    assert "get_fact" in with_tools.messages[0].content and "Call a function" in with_tools.messages[0].content
    native = outputs(aligner(style="native"), trajectory(*chat, source="glaive"))[0]
    assert native.messages[0].content == system.content
