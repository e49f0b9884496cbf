"""instruction_pairs: declared tools + demanded format in the prompt, the real steps as targets
(single and multi-turn), nothing copied from the prompt, calls that validate, parseable targets,
even draws across sources."""

from __future__ import annotations

import collections
import glob
import json

import jsonschema
import pytest

from schemas import Role, ToolCall, ToolSpec, Trajectory, Turn, trajectory_id
from tests.helpers import parse_file
from transforms.base import Filtered, RecordError, Stat, StepContext
from transforms.instruction_pairs import (
    ELIGIBLE,
    InstructionPairs,
    NotEligible,
    PairStep,
    allocate,
    check_format,
    read_conversation,
    render_step,
)
from transforms.react import parse_turn
from transforms.tool_cards import load_cards

WEATHER = ToolSpec(
    name="get_weather",
    description="Get the current weather of a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def traj(turns: list[Turn], tools: list[ToolSpec] | None = None, success: bool | None = None, **kw) -> Trajectory:
    return Trajectory(
        id=trajectory_id(kw.get("source", "s"), "1", turns),
        source=kw.get("source", "s"),
        source_id="1",
        task=kw.get("task"),
        tools=[WEATHER] if tools is None else tools,
        turns=turns,
        success=success,
    )


def weather_turns(arguments: dict | None = None, name: str = "get_weather") -> list[Turn]:
    return [
        Turn(role=Role.SYSTEM, text="You are a function-calling assistant."),
        Turn(role=Role.USER, text="Is it cold in Oslo right now?"),
        Turn(
            role=Role.ASSISTANT,
            text="",
            loss=True,
            tool_calls=[ToolCall(name=name, arguments={"city": "Oslo"} if arguments is None else arguments)],
        ),
        Turn(role=Role.TOOL, text='{"temperature": -3}'),
        Turn(role=Role.ASSISTANT, text="Yes, it is -3 degrees in Oslo.", loss=True),
    ]


def maker(**config):
    config.setdefault("count", 5)
    return InstructionPairs(config, StepContext(step_id="pairs")).maker()


def pair_of(trajectory: Trajectory, **config):
    outs = [o for o in maker(**config)(trajectory, selected=[trajectory.id]) if not isinstance(o, Stat)]
    (sample,) = outs
    return sample


@pytest.mark.parametrize("fmt", ["react", "json"])
@pytest.mark.parametrize("placement", ["system", "user"])
def test_prompt_declares_tools_and_format_and_never_holds_the_target(fmt, placement):
    sample = pair_of(traj(weather_turns()), formats=[fmt], placements=[placement], multi_turn_share=1.0)
    system, first_user = sample.messages[0], sample.messages[1]
    assert system.role is Role.SYSTEM and "get_weather" in system.content and '"city"' in system.content
    demand = "Action Input" if fmt == "react" else '"arguments"'  # the tools say "JSON Schema" too
    assert demand in (system.content if placement == "system" else first_user.content)
    assert demand not in (first_user.content if placement == "system" else system.content)
    assert "Is it cold in Oslo right now?" in first_user.content
    prompt = "\n".join(m.content for m in sample.messages if not m.loss)
    targets = [m for m in sample.messages if m.loss]
    assert [m.role for m in sample.messages[2:]] == [Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]  # multi-turn
    assert len(targets) == 2 and all(m.part == "react" for m in targets)
    assert '{"city": "Oslo"}' not in prompt and "-3 degrees" not in prompt
    if fmt == "react":
        (call,) = parse_turn(Turn(role=Role.ASSISTANT, text=targets[0].content))
        assert call.call == ToolCall(name="get_weather", arguments={"city": "Oslo"})
        (final,) = parse_turn(Turn(role=Role.ASSISTANT, text=targets[1].content))
        assert final.finished and final.answer == "Yes, it is -3 degrees in Oslo."
    else:
        assert json.loads(targets[0].content) == {"tool": "get_weather", "arguments": {"city": "Oslo"}}
        assert json.loads(targets[1].content) == {"answer": "Yes, it is -3 degrees in Oslo."}
    assert sample.tools == [WEATHER] and sample.kind == "instruction"
    assert sample.metadata == {"format": fmt, "placement": placement, "shape": "multi"}


def test_single_pairs_end_at_the_first_call():
    sample = pair_of(traj(weather_turns()), multi_turn_share=0.0)
    assert sample.metadata["shape"] == "single"
    assert [m.role for m in sample.messages] == [Role.SYSTEM, Role.USER, Role.ASSISTANT]


def test_calls_must_name_declared_tools_with_valid_arguments_and_episodes_must_succeed():
    with pytest.raises(NotEligible) as info:
        read_conversation(traj(weather_turns(name="get_forecast")))
    assert info.value.reason == "undeclared_tool"
    with pytest.raises(NotEligible) as info:
        read_conversation(traj(weather_turns(arguments={"town": "Oslo"})))
    assert info.value.reason == "arguments_fail_schema"
    with pytest.raises(NotEligible) as info:
        read_conversation(traj(weather_turns(), success=False))
    assert info.value.reason == "failed_episode"
    with pytest.raises(NotEligible) as info:
        read_conversation(traj(weather_turns(), tools=[]))
    assert info.value.reason == "no_declared_tools"
    protocol = [*weather_turns()[:4], Turn(role=Role.USER, text="This is not the first time you try this task, ...")]
    with pytest.raises(NotEligible) as info:
        read_conversation(traj([*protocol, weather_turns()[4]]))
    assert info.value.reason == "search_protocol_turn"
    outs = list(maker()(traj(weather_turns(), success=False), selected=[]))
    assert [o.reason for o in outs if isinstance(o, Filtered)] == ["failed_episode"]


@pytest.mark.parametrize("fmt", ["react", "json"])
def test_targets_parse_back_with_the_format_parser(fmt):
    steps = [
        PairStep(thought="need data.", call=ToolCall(name="get_weather", arguments={"city": "Oslo"})),
        PairStep(thought=None, answer="It is cold."),
        PairStep(thought="done.", call=ToolCall(name="answer", arguments={"answer": "[3]"})),  # DB/OS final tool
        PairStep(thought=None, call=ToolCall(name="finish", arguments={"answer": "Badr Hari"})),
        # DB's typed answer: a list in the call, its JSON in ReAct's Final Answer line
        PairStep(thought="done.", call=ToolCall(name="answer", arguments={"answer": ["Paris", 3]})),
    ]
    for step in steps:
        text = render_step(step, fmt)
        check_format(step, fmt, text)
    assert render_step(steps[2], "react") == "Thought: done.\nFinal Answer: [3]"
    assert render_step(steps[4], "react") == 'Thought: done.\nFinal Answer: ["Paris", 3]'
    assert json.loads(render_step(steps[4], "json"))["arguments"] == {"answer": ["Paris", 3]}
    with pytest.raises(RecordError, match="format_check_failed"):
        check_format(steps[4], fmt, render_step(steps[4], fmt).replace("Paris", "Rome"))
    with pytest.raises(RecordError, match="format_check_failed"):
        check_format(steps[0], fmt, render_step(steps[0], fmt).replace("Oslo", "Bergen"))


def test_text_command_environments_use_their_tool_cards():
    turns = [
        Turn(role=Role.USER, text="Who directed the film Alien?"),
        Turn(role=Role.ASSISTANT, text="Thought: I should search Alien.\nAction: search[Alien (film)]", loss=True),
        Turn(role=Role.USER, text="Observation: Alien is a 1979 film directed by Ridley Scott."),
        Turn(role=Role.ASSISTANT, text="Thought: It is Ridley Scott.\nAction: finish[Ridley Scott]", loss=True),
    ]
    fireact = traj(turns, tools=[], source="fireact", task="fireact")
    with pytest.raises(NotEligible, match="no_declared_tools"):
        read_conversation(fireact)
    conversation = read_conversation(fireact, load_cards())
    assert {t.name for t in conversation.tools} == {"search", "lookup", "finish"}
    kinds = [kind for kind, _ in conversation.events]
    assert kinds == ["assistant", "tool", "assistant"]  # the observation is the call's result
    tools = {t.name: t for t in conversation.tools}
    first, last = conversation.events[0][1].call, conversation.events[2][1].call
    assert first.name == "search" and list(first.arguments.values()) == ["Alien (film)"]
    assert last.name == "finish" and list(last.arguments.values()) == ["Ridley Scott"]
    for call in (first, last):
        jsonschema.validate(call.arguments, tools[call.name].parameters)
    sample = maker(multi_turn_share=1.0)(fireact, selected=[fireact.id])
    (pair,) = [o for o in sample if not isinstance(o, Stat)]
    assert conversation.instruction and conversation.instruction in pair.messages[0].content


def test_a_kg_question_without_its_in_context_example_is_not_a_new_one():
    example = "Question: who wrote Dune?\nEntities: [Dune]"
    asked = "A new question: find rheumatoid arthritis trial sponsors.\nEntities: [Rheumatoid arthritis]"
    turns = [
        Turn(role=Role.USER, text=example),
        Turn(role=Role.ASSISTANT, text="Thought: look.\nAction: get_relations(Dune)", loss=False),
        Turn(role=Role.USER, text=asked),
        Turn(
            role=Role.ASSISTANT,
            text="Thought: relations first.\nAction: get_relations(Rheumatoid arthritis)",
            loss=True,
        ),
        Turn(role=Role.USER, text="Observation: [medicine.disease.causes]"),
        Turn(role=Role.ASSISTANT, text="Thought: done.\nFinal Answer: #0", loss=True),
    ]
    conversation = read_conversation(traj(turns, tools=[], source="agentinstruct", task="kg"), load_cards())
    assert conversation.task.startswith("Question: find rheumatoid arthritis trial sponsors.")
    assert "new question" not in conversation.task.lower()


def test_an_os_problem_without_its_in_context_example_is_not_a_new_one():
    from transforms.instruction_pairs import task_text

    asked = "Now, I will start a new problem in a new OS. My problem is:\n\nHow many files are in /etc?"
    assert task_text(asked) == "How many files are in /etc?"
    assert task_text("How many files are in /etc?") == "How many files are in /etc?"


def test_allocate_spreads_the_count_evenly_over_sources_exactly():
    def ranked(group: str, n: int):
        return [((i, f"{group}{i}"), f"{group}{i}") for i in range(n)]

    groups = {"big": ranked("big", 100), "mid": ranked("mid", 40), "tiny": ranked("tiny", 3)}
    chosen = allocate(groups, 60)
    counts = collections.Counter(key.rstrip("0123456789") for key in chosen)
    assert counts == {"tiny": 3, "big": 29, "mid": 28} and len(chosen) == 60
    assert len(allocate(groups, 1000)) == 143  # min(count, candidates)
    assert allocate(groups, 0) == []


# --- real data ----------------------------------------------------------------------------------


def real_trajectories(external) -> list[Trajectory]:
    out = []
    for path in sorted(glob.glob(str(external("llamafactory_glaive_toolcall") / "*.json"))):
        out += [t.model_copy(update={"source": "glaive"}) for t in parse_file(path, "sharegpt")[0]]
    for path in sorted(glob.glob(str(external("toolbench_openbmb", "data_example", "answer") / "*" / "*.json"))):
        out += [
            t.model_copy(update={"source": "toolbench"})
            for t in parse_file(
                path,
                "openai",
                messages_field="answer_generation.train_messages.-1",
                tools_field="answer_generation.function",
                success_field="win",
            )[0]
        ]
    for path in sorted(glob.glob(str(external("agentinstruct_thudm") / "*.parquet"))):
        out += [t.model_copy(update={"source": "agentinstruct"}) for t in parse_file(path, "agentinstruct")[0]]
    paths = sorted(glob.glob(str(external("fireact", "data", "finetune", "gpt_format") / "*.jsonl")))
    out += [t.model_copy(update={"source": "fireact", "task": "fireact"}) for t in parse_file(paths[0], "openai")[0]]
    return out


@pytest.mark.real_data
def test_real_pairs_need_format_skill(external):
    """The issue's targets: targets copied from the prompt <= 5 %; every call declared and valid;
    every target parses; glaive and ToolBench represented; multi-turn pairs present."""
    trajectories = real_trajectories(external)
    fn = maker(count=400)
    ranked: dict[str, list] = collections.defaultdict(list)
    from transforms.instruction_pairs import _candidate_ranks

    for t in trajectories:
        for group, value in _candidate_ranks(t, 0, "pairs", fn.cards, True):
            ranked[group].append(value)
    selected = allocate(ranked, 400)
    samples = [o for t in trajectories for o in fn(t, selected=selected) if not isinstance(o, Stat | Filtered)]
    assert len(samples) == 400
    sources = collections.Counter(s.lineage.source for s in samples)
    assert sources["glaive"] >= 50 and sources["toolbench"] >= 3 and sources["agentinstruct"] and sources["fireact"]
    assert {s.metadata["shape"] for s in samples} == {"single", "multi"}
    copied = 0
    for sample in samples:
        tools = {t.name: t for t in sample.tools}
        prompt = "\n".join(m.content for m in sample.messages if not m.loss)
        fmt = sample.metadata["format"]
        is_copied = False
        for message in (m for m in sample.messages if m.loss):
            if fmt == "json":
                value = json.loads(message.content)
                thought, name, arguments = value.get("thought"), value.get("tool"), value.get("arguments")
            else:
                (step,) = parse_turn(Turn(role=Role.ASSISTANT, text=message.content))
                thought = step.thought
                name, arguments = (step.call.name, step.call.arguments) if step.call else (None, None)
            if name is not None:
                assert name in tools and name in sample.messages[0].content
                jsonschema.validate(arguments, tools[name].parameters or {"type": "object"})
            if (thought and thought in prompt) or (arguments and json.dumps(arguments, ensure_ascii=False) in prompt):
                is_copied = True
        copied += is_copied
    assert copied / len(samples) <= 0.05


WEBSHOP_PROMPT = (
    "You are web shopping.\nI will give you instructions about what to do.\n"
    "An action should be of the following structure:\nsearch[keywords]\nclick[value]\n"
    "Your response should use the following format:\n\nThought:\nI think ... \n\nAction: \nclick[something]"
)
BABYAI_PROMPT = "You are an exploration master that wants to finish every goal you are given. ... Action: turn left"


def agentgym(env: str, messages: list[tuple[str, str]], reward: float, success: int) -> Trajectory:
    """An AgentGym rollout record (openai format, no loss flags), read by the openai reader."""
    from transforms.formats import openai
    from transforms.formats.common import ParseContext

    record = {
        "conversations": [{"role": r, "content": c, "reasoning_content": None} for r, c in messages],
        "item_id": f"{env}_7",
        "reward": reward,
        "success": success,
        "task_name": env,
    }
    return openai.parse(record, ParseContext(source="agentgym", file_name="f.jsonl", index=0, fields=openai.FIELDS))


def webshop_rollout(reward: float = 1.0, success: int = 1) -> Trajectory:
    task = "WebShop [SEP] Instruction: [SEP] Find me a red wool scarf, price lower than 30.00 dollars [SEP] Search"
    return agentgym(
        "webshop",
        [
            ("user", WEBSHOP_PROMPT),
            ("assistant", "Ok."),
            ("user", task),
            ("assistant", "Thought:\nI should search for the scarf.\n\nAction:\nsearch[red wool scarf]"),
            (
                "user",
                "Instruction: [SEP] Find me a red wool scarf [SEP] Back to Search [SEP] B01 [SEP] Red Scarf [SEP] $12",
            ),
            ("assistant", "Thought:\nB01 fits.\n\nAction:\nclick[B01]"),
            ("user", "Instruction: [SEP] Find me a red wool scarf [SEP] Back to Search [SEP] Buy Now"),
            ("assistant", "Action:\nclick[Buy Now]"),
        ],
        reward,
        success,
    )


def babyai_rollout(reward: float, success: int = 0) -> Trajectory:
    return agentgym(
        "babyai",
        [
            ("user", BABYAI_PROMPT),
            ("assistant", "OK. I'll follow your instructions and try my best to solve the task."),
            ("user", "Your goal: go to the red ball\nIn front of you in this room, you can see a red ball 1."),
            ("assistant", "Thought:\nThe ball is ahead.\n\nAction:\ngo to red ball 1"),
            ("user", "The task is completed."),
        ],
        reward,
        success,
    )


def test_agentgym_acknowledgement_is_unsupervised_and_webshop_rollouts_give_pairs():
    """AgentGym's "Ok." after the environment's prompt is read loss=false (as AgentInstruct marks
    it), so the prompt and its acknowledgement go with the card's prompt rules and the task is
    the first observation: WebShop rollouts give pairs whose targets parse back."""
    rollout = webshop_rollout()
    assert [t.loss for t in rollout.turns if t.role is Role.ASSISTANT] == [False, True, True, True]
    conversation = read_conversation(rollout, load_cards())
    assert (
        conversation.task.startswith("WebShop [SEP] Instruction:") and "Find me a red wool scarf" in conversation.task
    )
    calls = [step.call for kind, step in conversation.events if kind == "assistant"]
    assert [(c.name, c.arguments) for c in calls] == [
        ("search", {"keywords": "red wool scarf"}),
        ("click", {"button": "B01"}),
        ("click", {"button": "Buy Now"}),
    ]
    for fmt in ("react", "json"):
        (pair,) = [o for o in maker(formats=[fmt])(rollout, selected=[rollout.id]) if not isinstance(o, Stat)]
        assert pair.tools and {t.name for t in pair.tools} == {"search", "click"}
        assert "You are web shopping" not in "\n".join(m.content for m in pair.messages)
        target = next(m for m in pair.messages if m.loss)
        assert "red wool scarf" in target.content and "red wool scarf" not in pair.messages[0].content


def test_an_acknowledgement_with_a_loss_flag_or_a_real_reply_stays_as_the_source_says():
    from transforms.formats import openai
    from transforms.formats.common import ParseContext

    ctx = ParseContext(source="s", file_name="f", index=0, fields=openai.FIELDS)

    def losses(messages):
        return [t.loss for t in openai.parse({"messages": messages}, ctx).turns if t.role is Role.ASSISTANT]

    flagged = [
        {"role": "user", "content": "Rules."},
        {"role": "assistant", "content": "OK.", "loss": True},
        {"role": "user", "content": "Task."},
        {"role": "assistant", "content": "Done."},
    ]
    assert losses(flagged) == [True, True]
    real = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "OK, here is a plan: ..."}]
    assert losses(real) == [True]
    real_then_user = [*real, {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Sure."}]
    assert losses(real_then_user) == [True, True]
    unflagged = [{k: v for k, v in m.items() if k != "loss"} for m in flagged]
    assert losses(unflagged) == [False, True]


def test_babyai_episodes_are_judged_by_reward_when_their_success_flag_is_ignored():
    """AgentGym's BabyAI success flag is always 0: with ``ignore_success_flag: [babyai]`` (as in
    reward_filter and the audit) a rewarded episode gives a pair, one with reward 0 does not."""
    won, lost = babyai_rollout(reward=0.89), babyai_rollout(reward=0.0)
    with pytest.raises(NotEligible, match="failed_episode"):
        read_conversation(won, load_cards())
    conversation = read_conversation(won, load_cards(), ignore_success_flag=["babyai"])
    (step,) = [step for kind, step in conversation.events if kind == "assistant"]
    assert step.call == ToolCall(name="go_to", arguments={"object": "red ball 1"})
    with pytest.raises(NotEligible, match="failed_episode") as info:
        read_conversation(lost, load_cards(), ignore_success_flag=["babyai"])
    assert info.value.detail == "reward 0"
    outs = list(maker(ignore_success_flag=["babyai"])(won, selected=[won.id]))
    assert [o.metadata["format"] for o in outs if not isinstance(o, Stat)]
    assert [o.reason for o in maker()(won, selected=[won.id]) if isinstance(o, Filtered)] == ["failed_episode"]


def test_screened_trajectories_are_read_again_only_when_drawn(monkeypatch):
    """The step's screening pass reads each conversation once; the pairs pass reads only the
    drawn ones again, and filters the others with the screening's reason."""
    import transforms.instruction_pairs as module

    reads = []
    real = module.read_conversation
    monkeypatch.setattr(module, "read_conversation", lambda *a, **k: reads.append(1) or real(*a, **k))
    fn = maker()
    trajectory = traj(weather_turns())
    screening = fn.screen(trajectory)
    assert screening == module.ELIGIBLE and len(reads) == 1
    outs = list(fn(trajectory, selected=[], screening=screening))
    assert [o.reason for o in outs if isinstance(o, Filtered)] == ["not_selected"] and len(reads) == 1
    outs = list(fn(trajectory, selected=[], screening=("no_task", "why")))
    assert [(o.reason, o.detail) for o in outs if isinstance(o, Filtered)] == [("no_task", "why")] and len(reads) == 1
    outs = list(fn(trajectory, selected=[trajectory.id], screening=screening))
    assert len([o for o in outs if not isinstance(o, Stat)]) == 1 and len(reads) == 2


def test_a_trajectory_whose_outputs_cite_hidden_hints_gives_no_pair():
    def os_episode(task_text: str) -> Trajectory:
        turns = [
            Turn(role=Role.USER, text=task_text),
            Turn(
                role=Role.ASSISTANT,
                text="Think: As per the hints, I list the files.\n\nAct: bash\n\n```bash\nls\n```",
                loss=True,
            ),
            Turn(role=Role.USER, text="The output of the OS:\na.txt"),
            Turn(role=Role.ASSISTANT, text="Think: One file.\n\nAct: answer(1)", loss=True),
        ]
        return traj(turns, tools=[], task="os", source="agentinstruct")

    step = maker(count=1)
    hidden = os_episode("How many files are in the current directory?")
    assert step.screen(hidden) == ("hidden_context", "turn 1 cites context the conversation never shows")
    assert step.screen(os_episode("How many files are here? Hints: use ls.")) == ELIGIBLE
