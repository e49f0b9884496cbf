"""The data-quality audit: each check on constructed samples (flagged and clean), the auditor's
order independence, the policy, the run integration, the CLI, and hand counts on real data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import AuditPolicy, CheckPolicy, Lineage, Message, Role, Sample, ToolCall, ToolSpec
from schemas.audit import EvalSetSpec
from transforms.quality.auditor import AuditConfigError, Auditor
from transforms.quality.check import AuditEnv
from transforms.quality.checks import CHECKS
from transforms.quality.checks.near_duplicate import prompt_of

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather of a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
)


def sample(
    messages: list[tuple[str, str] | Message],
    *,
    sid: str = "s0",
    kind: str = "agent",
    tools: list[ToolSpec] | None = None,
    source_id: str | None = None,
    metadata: dict | None = None,
) -> Sample:
    built = []
    for m in messages:
        if isinstance(m, Message):
            built.append(m)
        else:
            role, text = m
            built.append(Message(role=Role(role), content=text, loss=role == "assistant"))
    return Sample(
        id=sid,
        kind=kind,  # type: ignore[arg-type]
        messages=built,
        tools=tools or [],
        lineage=Lineage(source="test", source_id=source_id or sid),
        metadata=metadata or {},
    )


def call(name: str, arguments: dict, loss: bool = True) -> Message:
    return Message(
        role=Role.ASSISTANT,
        content=json.dumps(arguments),
        loss=loss,
        tool_calls=[ToolCall(name=name, arguments=arguments)],
    )


def run_check(name: str, samples: list[Sample], **options):
    auditor = Auditor(AuditPolicy(checks={name: CheckPolicy(options=options)} if options else {}))
    return auditor.audit(samples).checks[name]


def verdict(name: str, one: Sample, **options):
    return CHECKS[name](options).inspect(one)


# --- per-sample checks -----------------------------------------------------------------------


def test_undeclared_tool_flags_calls_to_tools_not_in_the_sample():
    declared = sample([("user", "Weather in Oslo?"), call("get_weather", {"city": "Oslo"})], tools=[WEATHER])
    undeclared = sample([("user", "Weather in Oslo?"), call("search", {"query": "Oslo"})], sid="s1", tools=[WEATHER])
    react = sample(
        [("user", "Who wrote Dune?"), ("assistant", "Thought: look it up.\nAction: search[Dune author]")], sid="s2"
    )
    assert verdict("undeclared_tool", declared).flagged is False
    assert verdict("undeclared_tool", undeclared).flagged is True
    assert verdict("undeclared_tool", react).reason == "search"
    assert verdict("undeclared_tool", sample([("user", "hi"), ("assistant", "hello there")])) is None
    result = run_check("undeclared_tool", [declared, undeclared, react])
    assert (result.count, result.total, result.status) == (2, 3, "fail")


def test_argument_schema_validates_required_types_enums_and_extra_keys():
    def with_args(arguments: dict) -> Sample:
        return sample([("user", "weather?"), call("get_weather", arguments)], tools=[WEATHER])

    assert verdict("argument_schema", with_args({"city": "Oslo", "unit": "c"})).flagged is False
    assert verdict("argument_schema", with_args({"unit": "c"})).reason == "required"
    assert verdict("argument_schema", with_args({"city": 3})).reason == "type"
    assert verdict("argument_schema", with_args({"city": "Oslo", "unit": "kelvin"})).reason == "enum"
    assert verdict("argument_schema", with_args({"city": "Oslo", "when": "now"})).reason == "additionalProperties"
    assert verdict("argument_schema", with_args({"city": "Oslo", "when": "now"}), forbid_extra=False).flagged is False
    broken = ToolSpec(name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "str"}}})
    bad_schema = sample([("user", "weather?"), call("get_weather", {"city": "Oslo"})], tools=[broken])
    assert verdict("argument_schema", bad_schema).reason == "invalid_schema"


def test_identity_claim_flags_supervised_claims_only():
    claim = sample([("user", "Who are you?"), ("assistant", "I am Vicuna, trained by researchers from LMSYS.")])
    quoted = sample([("user", "I am Vicuna, who are you?"), ("assistant", "Nice to meet you! How can I help?")])
    third = sample([("user", "What is ChatGPT?"), ("assistant", "ChatGPT is a chatbot released by OpenAI in 2022.")])
    unsupervised = sample(
        [("user", "hi"), Message(role=Role.ASSISTANT, content="I am ChatGPT.", loss=False), ("assistant", "Hello!")]
    )
    assert verdict("identity_claim", claim).flagged is True
    assert verdict("identity_claim", quoted).flagged is False
    assert verdict("identity_claim", third).flagged is False
    assert verdict("identity_claim", unsupervised).flagged is False
    assert verdict("identity_claim", sample([("user", "你是谁"), ("assistant", "我是ChatGPT，一个语言模型。")])).flagged
    custom = sample([("user", "Who are you?"), ("assistant", "Call me Zed.")])
    assert verdict("identity_claim", custom, patterns={"zed": r"call me zed"}).reason == "zed"


def test_failed_episode_reads_success_reward_and_the_final_observation():
    ok = sample([("user", "task"), ("assistant", "done"), ("user", "Episode finished, reward = True")])
    by_text = sample(
        [("user", "task"), ("assistant", "done"), ("user", "Observation: Episode finished, reward = False")]
    )
    by_flag = sample([("user", "task"), ("assistant", "done")], metadata={"success": False, "reward": 0.8})
    by_reward = sample([("user", "task"), ("assistant", "done")], metadata={"reward": 0.0})
    general = sample([("user", "q"), ("assistant", "a")], kind="general", metadata={"success": False})
    assert verdict("failed_episode", ok).flagged is False
    assert verdict("failed_episode", by_text).reason == "final_observation"
    assert verdict("failed_episode", by_flag).reason == "success_false"
    assert verdict("failed_episode", by_reward).reason == "reward"
    assert verdict("failed_episode", general) is None
    broken_flag = by_flag.model_copy(update={"lineage": Lineage(source="agentgym", source_id="b", task="babyai")})
    assert verdict("failed_episode", broken_flag).reason == "success_false"
    assert verdict("failed_episode", broken_flag, ignore_success_flag=["babyai"]).flagged is False
    zero = by_reward.model_copy(update={"lineage": Lineage(source="agentgym", source_id="c", task="babyai")})
    assert verdict("failed_episode", zero, ignore_success_flag=["babyai"]).reason == "reward"


def test_prompt_copy_flags_transcription_not_answers():
    thought = "I need to search for the founder of Dogfish Head Brewery in Milton Delaware"
    copy = sample(
        [
            ("user", f"Rewrite in ReAct format. Thought: {thought}. Tool: search. Arguments: founder of Dogfish Head"),
            ("assistant", f'Thought: {thought}.\nAction: search\nAction Input: {{"query": "founder of Dogfish Head"}}'),
        ]
    )
    task = sample(
        [
            ("user", "Who founded the brewery in Milton, Delaware? Answer in ReAct format."),
            ("assistant", f'Thought: {thought}.\nAction: search\nAction Input: {{"query": "Dogfish Head founder"}}'),
        ]
    )
    assert verdict("prompt_copy", copy).flagged is True
    assert verdict("prompt_copy", task).flagged is False
    assert verdict("prompt_copy", sample([("user", "hi"), ("assistant", "hello")])) is None


def test_prompt_copy_words_of_ascii_text_are_those_of_the_plain_definition():
    import random
    import string
    from itertools import filterfalse

    from transforms.quality.checks.prompt_copy import FORMAT_WORDS, content_words

    table = str.maketrans({c: " " for c in string.punctuation if c != "_"})

    def plain(text: str) -> list[str]:
        words = re.sub(r'"[^"\n]{1,40}"\s*:', " ", text).lower().translate(table).split()
        return list(filterfalse(FORMAT_WORDS.__contains__, words))

    rng = random.Random(3)
    extra = ["Thought", "Action", '"query": ', "final answer"]
    alphabet = [chr(c) for c in range(128)] + list("éßİKΣ中，’\u00a0") + extra
    for _ in range(20_000):
        text = "".join(rng.choices(alphabet, k=rng.randrange(0, 40)))
        assert content_words(text) == plain(text), repr(text)


def test_prompt_copy_never_joins_two_prompt_messages_into_one_n_gram():
    """A target 4-gram counts as copied only when one prompt message holds it whole."""
    target = "alpha beta gamma delta epsilon zeta eta theta"
    whole = sample([("system", f"say {target}"), ("user", "go"), ("assistant", target)])
    prompt = [("system", "say alpha beta gamma"), ("user", "delta epsilon zeta eta theta")]
    split = sample([*prompt, ("assistant", target)])
    assert verdict("prompt_copy", whole).flagged is True
    assert verdict("prompt_copy", split).flagged is False  # 2 of 5 4-grams sit inside one message


def test_format_contradiction_both_directions():
    demand = (
        "Use this format:\nThought: your reasoning\nAction: the action to take\n"
        "You will be judged as FAIL immediately otherwise."
    )
    ignored = sample([("system", demand), ("user", "Find a red mug."), ("assistant", "I will look for a red mug.")])
    followed = sample([("system", demand), ("user", "Find a red mug."), ("assistant", "Thought: look.\nAction: look")])
    unasked = sample([("user", "Find a red mug."), ("assistant", "Thought: look around.\nAction: look")])
    json_ignored = sample(
        [("user", "List three fruits. Respond only in JSON."), ("assistant", "Apples, pears, plums.")]
    )
    json_followed = sample([("user", "List three fruits. Respond only in JSON."), ("assistant", '["apple", "pear"]')])
    assert verdict("format_contradiction", ignored).reason == "react_demanded"
    assert verdict("format_contradiction", followed).flagged is False
    assert verdict("format_contradiction", unasked).reason == "react_unrequested"
    assert verdict("format_contradiction", json_ignored).reason == "json_demanded"
    assert verdict("format_contradiction", json_followed).flagged is False


WEBSHOP_FORMAT = (
    "Your response should use the following format:\n\nThought:\nI think ... \n\nAction: \nclick[something]"
)


def test_format_contradiction_flags_an_action_without_the_demanded_thought():
    def episode(instructions: str, *outputs: str) -> Sample:
        messages = [Message(role=Role.USER, content=instructions), Message(role=Role.ASSISTANT, content="Ok.")]
        for output in outputs:
            messages += [
                Message(role=Role.USER, content="WebShop [SEP] Search"),
                Message(role=Role.ASSISTANT, content=output, loss=True),
            ]
        return sample(messages)

    with_thought = "Thought:\nI need a red mug.\n\nAction:\nsearch[red mug]"
    skipped = episode(WEBSHOP_FORMAT, with_thought, "Action:\nclick[B0001]")
    kept = episode(WEBSHOP_FORMAT, with_thought, "Thought:\nIt fits.\n\nAction:\nclick[B0001]")
    optional = episode("Reply as:\nThought: <your reasoning> (optional)\nAction: <the tool>", "Action: search")
    answer = episode(WEBSHOP_FORMAT, with_thought, "Final Answer: B0001")  # an answer, not an action
    assert verdict("format_contradiction", skipped).reason == "thought_demanded"
    assert verdict("format_contradiction", skipped).excerpt == "Action:\nclick[B0001]"
    assert verdict("format_contradiction", kept).flagged is False
    other_marker = episode(WEBSHOP_FORMAT, with_thought, "Think:\nIt fits.\n\nAction:\nclick[B0001]")
    assert verdict("format_contradiction", other_marker).reason == "thought_demanded"
    os_format = episode("Think: what to do\nAct: bash", "Think: list files.\nAct: bash")
    assert verdict("format_contradiction", os_format).flagged is False
    assert verdict("format_contradiction", optional).flagged is False
    assert verdict("format_contradiction", answer).flagged is False
    unsupervised = skipped.model_copy(
        update={
            "messages": [m.model_copy(update={"loss": m.loss and "Thought" in m.content}) for m in skipped.messages]
        }
    )
    assert verdict("format_contradiction", unsupervised).flagged is False


#: The reading of "markers shown" that ``demands_react`` implements without it: a marker opening
#: a line (after spaces, quotes, ``>``, ``*``, ``-``), or right after a quote mid-line.
_REACT_SHOWN = re.compile(
    r"(?:^[ \t>*\-\"'`]*|[\"'`])(?:Thought|THOUGHT|Think|Action|ACTION|Act|Action Input|Final Answer)[ \t]*:",
    re.MULTILINE,
)


def test_demands_react_counts_shown_markers_as_the_line_and_quote_pattern_does():
    import random

    from transforms.quality.checks.format_contradiction import demands_react

    pieces = ["Thought", "THOUGHT", "Think", "Action", "Act", "ACTION", "Action Input", "Final Answer", "Answer"]
    pieces += [":", ": ", " :", "\n", "\r\n", " ", "\t", '"', "'", "`", ">", "*", "-", "x", "do it"]
    pieces += ["ReActor", "\u00e9", "\r"]
    rng = random.Random(3)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 14)))
        expected = sum(1 for _ in zip(range(2), _REACT_SHOWN.finditer(text), strict=False)) >= 2
        assert demands_react(text) is expected, repr(text)
    assert demands_react("Answer in the ReAct format.") is True
    assert demands_react('Reply as: format:"THOUGHT: your thoughts." then "ACTION: your action."') is True
    assert demands_react("Plan: Thought: a. Action: b.") is False  # mid-line, not after a quote


def test_language_mismatch_uses_the_query_not_observations_and_skips_translation():
    zh_en = sample(
        [
            ("user", "请问怎样才能学好数学？有什么好方法吗？"),
            ("assistant", "Practice every day and work through many problems."),
        ]
    )
    zh_zh = sample(
        [("user", "请问怎样才能学好数学？有什么好方法吗？"), ("assistant", "每天练习，多做题目，并且复习错题。")]
    )
    translate = sample(
        [("user", "请把这句话翻译成英语：我很高兴见到你。"), ("assistant", "I am very happy to meet you, my friend.")]
    )
    observed = sample(
        [
            ("user", "请帮我查一下巴黎今天的天气怎么样？"),
            call("get_weather", {"city": "Paris"}),
            ("user", '{"forecast": "sunny with light winds all day long", "temperature": 21}'),
            ("assistant", "巴黎今天天气晴朗，气温二十一度，风很小。"),
        ],
        tools=[WEATHER],
    )
    assert verdict("language_mismatch", zh_en).reason == "zh->en"
    assert verdict("language_mismatch", zh_zh).flagged is False
    assert verdict("language_mismatch", translate) is None
    assert verdict("language_mismatch", observed).flagged is False


def test_eval_overlap_finds_a_question_hidden_in_a_long_conversation(tmp_path: Path):
    question = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences"
    (tmp_path / "eval.jsonl").write_text(json.dumps({"turns": [question]}) + "\n")
    policy = AuditPolicy(eval_sets=[EvalSetSpec(name="mt", paths=["eval.jsonl"], fields=["turns"])])
    filler = " ".join(f"word{i}" for i in range(2000))
    hidden = sample([("user", f"{filler} {question.lower()}! {filler}"), ("assistant", "Here is the post.")])
    clean = sample([("user", "Write about a trip to Paris."), ("assistant", "Paris was lovely.")], sid="s1")
    result = Auditor(policy, str(tmp_path)).audit([hidden, clean]).checks["eval_overlap"]
    assert (result.count, result.total, result.status) == (1, 2, "fail")
    assert result.details["items"] == {"mt": {"items": 1, "covered": 1}}
    assert "eval_overlap" not in Auditor(AuditPolicy()).checks  # not configured without eval sets


# --- aggregate checks ------------------------------------------------------------------------


def aligned(i: int, decision: str, elicit: dict[str, str] | None) -> Sample:
    """An aligned sample: question, thought, (elicitation), then a tool choice or an answer."""
    messages: list[Message | tuple[str, str]] = [
        ("user", f"Question number {i}: what is the population of city {i}?"),
        Message(role=Role.ASSISTANT, content=f"I should think about city {i}.", loss=True, part="thought"),
    ]
    if elicit is not None:
        messages.append(Message(role=Role.USER, content=elicit[decision], part="elicit"))
    if decision == "call":
        messages.append(Message(role=Role.ASSISTANT, content="I will use search.", loss=True, part="tool"))
    else:
        messages.append(Message(role=Role.ASSISTANT, content=f"It is {i} people.", loss=True, part="answer"))
    return sample(messages, sid=f"s{i:03d}", tools=[WEATHER])


def test_decision_leak_is_one_when_the_elicitation_gives_the_decision_away():
    telling = {"call": "Which tool will you use?", "answer": "So what is your answer?"}
    neutral = {"call": "Go on.", "answer": "Go on."}
    decisions = ["call" if i % 3 else "answer" for i in range(60)]
    leaky = run_check("decision_leak", [aligned(i, d, telling) for i, d in enumerate(decisions)])
    fair = run_check("decision_leak", [aligned(i, d, neutral) for i, d in enumerate(decisions)])
    unelicited = run_check("decision_leak", [aligned(i, d, None) for i, d in enumerate(decisions)])
    assert leaky.share == pytest.approx(1.0) and leaky.status == "fail"
    assert "which tool will you use?" in " ".join(e.excerpt for e in leaky.examples)
    assert fair.share == pytest.approx(0.0) and fair.status == "pass"
    assert unelicited.share == pytest.approx(0.0)
    only_calls = {"call": "Go on.", "answer": None}
    mixed = [aligned(i, d, only_calls if d == "call" else None) for i, d in enumerate(decisions)]
    assert run_check("decision_leak", mixed).share == pytest.approx(1.0)  # the absence gives it away too


def test_decision_leak_ignores_a_records_own_repeated_query():
    # Two derivations of one source record repeat its real question: not a template.
    first = sample([("user", "Is a tomato a fruit?"), ("assistant", "Yes, botanically.")], sid="a", source_id="r")
    second = sample([("user", "Is a tomato a fruit?"), ("assistant", "Yes, it is.")], sid="b", source_id="r")
    assert run_check("decision_leak", [first, second]).share == 0.0


def test_repeated_response_counts_canned_answers_per_kind():
    canned = "I cannot do that because I have no tools available in this conversation, sorry."
    negatives = [
        sample([("user", f"question {i}"), ("assistant", canned)], sid=f"n{i}", kind="negative") for i in range(10)
    ]
    varied = [
        sample(
            [("user", f"q {i}"), ("assistant", f"A different and helpful answer number {i} for you here")], sid=f"g{i}"
        )
        for i in range(10)
    ]
    result = run_check("repeated_response", negatives + varied)
    assert (result.count, result.total) == (9, 20)
    assert result.details["by_kind"]["negative"] == {
        "answers": 10,
        "distinct": 1,
        "distinct_share": 0.1,
        "top_share": 1.0,
    }
    assert result.examples[0].id == "n0" and "10x in negative" in result.examples[0].excerpt
    assert run_check("repeated_response", varied).count == 0


def test_misquoted_result_flags_a_quote_the_tool_never_returned_and_judges_only_answers_to_results():
    result = Message(role=Role.TOOL, content='{"title": "笨蛋与更笨的人", "year": 1994}')
    misquoted = sample([("user", "推荐一部喜剧。"), result, ("assistant", "你可以看1994年的“阿呆与阿瓜”。")])
    found = verdict("misquoted_result", misquoted)
    assert found.flagged and "阿呆与阿瓜" in found.excerpt
    verbatim = sample([("user", "推荐一部喜剧。"), result, ("assistant", "你可以看1994年的《笨蛋与更笨的人》。")])
    assert not verdict("misquoted_result", verbatim).flagged
    no_result = sample([("user", "Say something."), ("assistant", 'I would say "hello there".')])
    assert verdict("misquoted_result", no_result) is None  # no answer to a tool result: not judged
    summary = run_check("misquoted_result", [misquoted, verbatim, no_result])
    assert (summary.count, summary.total, summary.status) == (1, 2, "warn")


def test_near_duplicate_clusters_prompts_across_records_only():
    base = "Hello! How can I help you today with your travel plans to Norway next summer?"
    dups = [sample([("user", base + " " * i), ("assistant", f"answer {i}")], sid=f"d{i}") for i in range(4)]
    same_record = [
        sample(
            [("user", "A unique prompt about quantum computing basics"), ("assistant", "x")], sid="u1", source_id="r"
        ),
        sample(
            [("user", "A unique prompt about quantum computing basics"), ("assistant", "y")], sid="u2", source_id="r"
        ),
    ]
    other = [
        sample([("user", f"Completely different request {i} about cooking pasta"), ("assistant", "z")], sid=f"o{i}")
        for i in range(3)
    ]
    result = run_check("near_duplicate", dups + same_record + other)
    assert result.count == 3  # four records with one prompt: three duplicates
    assert result.details["largest_clusters"] == [4]
    assert result.examples[0].id == "d0"


def test_near_duplicate_prompt_is_the_request_not_the_elicitation_before_the_first_target():
    """``balance`` can take a tool choice out of the loss, so the first target follows align's
    "Continue.": the prompt is still the user's request, and different requests are no cluster."""

    def balanced(i: int, request: str) -> Sample:
        return sample(
            [
                ("user", request),
                Message(role=Role.ASSISTANT, content="search", loss=False, part="tool"),
                Message(role=Role.USER, content="Continue.", part="elicit"),
                Message(role=Role.ASSISTANT, content='{"q": "x"}', loss=True, part="arguments"),
            ],
            sid=f"b{i}",
        )

    requests = ["Find flights from Oslo to Rome in May", "Which museums open late in Vienna on Fridays?"]
    requests += ["Book a table for four at a vegan place", "How tall is the Eiffel Tower in metres?"]
    result = run_check("near_duplicate", [balanced(i, r) for i, r in enumerate(requests)])
    assert (result.count, result.total) == (0, 4)
    assert prompt_of(balanced(0, requests[0])) == requests[0]
    same = run_check("near_duplicate", [balanced(i, requests[0]) for i in range(3)])
    assert same.count == 2 and "Find flights" in same.examples[0].excerpt


# --- the auditor -----------------------------------------------------------------------------


def mixed_samples() -> list[Sample]:
    telling = {"call": "Which tool will you use?", "answer": "So what is your answer?"}
    out = [aligned(i, "call" if i % 2 else "answer", telling) for i in range(20)]
    out += [
        sample([("user", "who are you"), ("assistant", "I am Vicuna, made by LMSYS.")], sid=f"v{i}") for i in range(3)
    ]
    out += [sample([("user", "weather?"), call("search", {"q": "x"})], sid=f"t{i}", tools=[WEATHER]) for i in range(3)]
    return out


def test_the_report_does_not_depend_on_order_or_bundles():
    auditor = Auditor()
    samples = mixed_samples()
    whole = auditor.audit(samples)
    left, right = auditor.new_state(), auditor.new_state()
    for i, one in enumerate(reversed(samples)):
        auditor.observe(left if i % 3 else right, one)
    report, pending = auditor.finish(auditor.merge(right, left))
    auditor.fill_excerpts(report, pending, samples)
    assert report.model_dump() == whole.model_dump()


def _whole_run_samples() -> list[Sample]:
    """Samples that give the whole-run checks something to find: a canned answer, a prompt
    repeated across records, and the mixed samples."""
    canned = "I cannot do that because I have no tools available in this conversation, sorry."
    base = "Hello! How can I help you today with your travel plans to Norway next summer?"
    out = [sample([("user", f"question {i}"), ("assistant", canned)], sid=f"n{i}", kind="negative") for i in range(7)]
    out += [sample([("user", base + " " * i), ("assistant", f"answer number {i}")], sid=f"d{i}") for i in range(5)]
    return out + mixed_samples()


def test_whole_run_states_on_disk_give_the_same_report_and_leave_no_files(tmp_path, monkeypatch):
    """With a spill folder, near_duplicate and repeated_response keep their rows in files (the
    state Beam carries is their names); the report is the one kept in memory gives."""
    from transforms.quality import rows as rows_module

    monkeypatch.setattr(rows_module, "FLUSH_BYTES", 100)  # a file every row or two
    samples = _whole_run_samples()
    in_memory = Auditor()
    expected = in_memory.audit(samples)
    assert expected.checks["near_duplicate"].count and expected.checks["repeated_response"].count
    spilled = Auditor(spill_dir=str(tmp_path / "state"))
    states = [spilled.new_state() for _ in range(3)]
    memory_state = in_memory.new_state()
    for i, one in enumerate(samples):
        spilled.observe(states[i % 3], one)
        in_memory.observe(memory_state, one)
    merged = spilled.merge(states[2], spilled.merge(states[0], states[1]))
    assert len(list((tmp_path / "state").rglob("*.bin"))) > 10
    for rows in (merged["near_duplicate"], *merged["repeated_response"].kinds.values()):
        assert rows.files and len(rows.lengths) <= 2  # the state holds file names, not the rows
    for rows in (memory_state["near_duplicate"], *memory_state["repeated_response"].kinds.values()):
        assert not rows.files and len(rows.lengths) == len(rows)
    report, pending = spilled.finish(merged)
    spilled.fill_excerpts(report, pending, samples)
    assert report.model_dump() == expected.model_dump()
    assert list((tmp_path / "state").rglob("*.bin")) == []


def test_near_duplicate_components_joined_band_by_band_equal_a_union_find(tmp_path):
    """Rows sharing any band key are one cluster, transitively (across bands and records);
    checked against a plain union-find on random keys with many collisions, rows on disk."""
    import random

    check = CHECKS["near_duplicate"](None, AuditEnv(spill_dir=str(tmp_path)))
    state = check.new_state()
    state.flush_bytes = 500
    rng = random.Random(11)
    rows = [[rng.randrange(300)] + [rng.randrange(15_000) for _ in range(state.width - 1)] for _ in range(600)]
    for i, keys in enumerate(rows):
        state.append(keys, f"s{i:04d}")
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for keys in rows:  # a record joins its rows, a band key joins the records holding it
        for band, key in enumerate(keys[1:]):
            parent[find(("r", keys[0]))] = find(("b", band, key))
    records = {keys[0] for keys in rows}
    clusters: dict = {}
    for record in records:
        clusters.setdefault(find(("r", record)), set()).add(record)
    sizes = sorted((len(c) for c in clusters.values() if len(c) > 1), reverse=True)
    finding = check.finish(state)
    assert finding.count == sum(size - 1 for size in sizes) and finding.total == len(records)
    assert finding.details["largest_clusters"] == sizes[:5] and finding.details["clusters"] == len(sizes)
    assert len(sizes) > 10 and sizes[0] >= 3  # many clusters, some joined through several bands
    assert list(tmp_path.rglob("*.bin")) == []


def test_rows_read_back_in_one_order_from_files_and_buffer(tmp_path):
    from transforms.quality.rows import Rows

    left, right = Rows(2, str(tmp_path), flush_bytes=60), Rows(2, None)
    for i in range(7):
        left.append((i, 2**64 - 1 - i), f"lé{i}")
        right.append((100 + i, i), f"r{i}")
    assert left.files and not right.files
    merged = left.merge(right)
    assert len(merged) == 14
    assert merged.column(0).tolist() == [*range(7), *range(100, 107)]
    assert merged.column(1).tolist() == [2**64 - 1 - i for i in range(7)] + list(range(7))
    assert list(merged.labels()) == [f"lé{i}" for i in range(7)] + [f"r{i}" for i in range(7)]
    merged.discard()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="2 keys"):
        Rows(2).append((1,), "x")


def test_policy_sets_thresholds_severities_and_switches_checks_off():
    policy = AuditPolicy(
        checks={
            "identity_claim": CheckPolicy(severity="warn"),
            "undeclared_tool": CheckPolicy(threshold=1.0),
            "near_duplicate": CheckPolicy(enabled=False),
        }
    )
    report = Auditor(policy).audit(mixed_samples())
    assert report.checks["identity_claim"].status == "warn"
    assert report.checks["undeclared_tool"].share == 1.0
    assert report.checks["undeclared_tool"].status == "pass"  # not over a threshold of 1.0
    assert "near_duplicate" not in report.checks
    assert report.blocking == ["decision_leak"]
    with pytest.raises(AuditConfigError, match="unknown audit check"):
        Auditor(AuditPolicy(checks={"nope": CheckPolicy()}))
    with pytest.raises(AuditConfigError, match="invalid options"):
        Auditor(AuditPolicy(checks={"prompt_copy": CheckPolicy(options={"n": "many"})}))
    for name, options in (
        ("failed_episode", {"failure_patterns": ["("]}),
        ("language_mismatch", {"exempt_patterns": ["["]}),
        ("identity_claim", {"patterns": {"broken": "("}}),
    ):  # a pattern that does not compile is a policy error, not a crash in a worker
        with pytest.raises(AuditConfigError, match=r"does not compile|invalid regex"):
            Auditor(AuditPolicy(checks={name: CheckPolicy(options=options)}))


# --- runs, the step and the command ------------------------------------------------------------


def planted_dataset(path: Path) -> None:
    """An OpenAI-format JSONL file with one planted defect of each kind, and clean records."""
    weather = {"type": "function", "function": WEATHER.model_dump(mode="json")}
    canned = "Sorry, I cannot help with that because I have no tools available in this conversation."
    records = [
        {
            "messages": [
                {"role": "user", "content": "Who are you?"},
                {"role": "assistant", "content": "I am Vicuna, trained by LMSYS."},
            ]
        },
        {
            "tools": [weather],
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": '{"q": "Oslo"}'}}],
                },
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "It is sunny in Oslo today."},
            ],
        },
        {
            "tools": [weather],
            "messages": [
                {"role": "user", "content": "Weather in Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": '{"town": "Rome"}'}}
                    ],
                },
                {"role": "tool", "content": "rain"},
                {"role": "assistant", "content": "It rains in Rome today."},
            ],
        },
        {
            "messages": [
                {"role": "user", "content": "请问怎样才能学好数学？有什么好方法吗？"},
                {"role": "assistant", "content": "Practice every day and work through many problems."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Use this format:\nThought: ...\nAction: ...\nFind the mug."},
                {"role": "assistant", "content": "I found the mug on the table."},
            ]
        },
    ]
    question = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences"
    records += [
        # failed episode: the source's own success flag
        {
            "success": False,
            "messages": [
                {"role": "user", "content": "Open the door of the red house."},
                {"role": "assistant", "content": "I opened the blue door instead."},
            ],
        },
        # transcription: the target re-types its prompt
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Copy this exactly: the quick brown fox jumps over the lazy dog near the river bank",
                },
                {
                    "role": "assistant",
                    "content": "the quick brown fox jumps over the lazy dog near the river bank",
                },
            ]
        },
        # an evaluation question inside a long request
        {
            "messages": [
                {"role": "user", "content": "Some context first. " * 50 + question + ". Thanks!"},
                {"role": "assistant", "content": "Aloha! Here is a post about my trip to Hawaii and its culture."},
            ]
        },
    ]
    # elicitations that give the decision away: ReAct thoughts, then "Which tool?" / "Your answer?"
    for i in range(6):
        decides = 'Action: get_weather\nAction Input: {"city": "Oslo"}' if i % 2 else "Final Answer: it is sunny"
        elicit = "Which tool will you use?" if i % 2 else "So what is your answer?"
        records.append(
            {
                "tools": [weather],
                "messages": [
                    {"role": "system", "content": "Reply in the ReAct format."},
                    {"role": "user", "content": f"Weather question number {i} about city {i}?"},
                    {"role": "assistant", "content": f"Thought: I should think about city {i}."},
                    {"role": "user", "content": elicit},
                    {"role": "assistant", "content": f"Thought: decided for city {i}.\n{decides}"},
                ],
            }
        )
    records += [
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Please book a table for two people tonight at the small Italian place on Main "
                    f"Street near the old station, booking {i}",
                },
                {"role": "assistant", "content": canned},
            ]
        }
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def agentmill(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_the_command_catches_every_planted_defect_in_raw_input(tmp_path: Path):
    planted_dataset(tmp_path / "mine.jsonl")
    (tmp_path / "eval.jsonl").write_text(
        json.dumps({"turns": ["Compose an engaging travel blog post about a recent trip to Hawaii, highlighting "
                              "cultural experiences"]}) + "\n"
    )  # fmt: skip
    (tmp_path / "policy.yaml").write_text(
        "audit:\n  eval_sets:\n    - {name: mt_bench, paths: eval.jsonl, fields: [turns]}\n"
        "  checks:\n    prompt_copy: {threshold: 0}\n"
    )
    done = agentmill(
        "audit", str(tmp_path / "mine.jsonl"), "--format", "openai", "--json", "--policy", str(tmp_path / "policy.yaml")
    )
    assert done.returncode == 1, done.stderr  # block checks fail
    report = json.loads(done.stdout)
    assert report["_samples"] == 26
    for name, count in {
        "identity_claim": 1,
        "undeclared_tool": 1,
        "argument_schema": 1,
        "language_mismatch": 1,
        "format_contradiction": 1,
        "repeated_response": 11,
        "failed_episode": 1,
        "prompt_copy": 1,
        "eval_overlap": 1,
    }.items():
        assert report[name]["count"] == count, (name, report[name])
        assert report[name]["status"] in ("fail", "warn") and report[name]["examples"], name
        assert {"count", "share", "status", "examples"} <= set(report[name])
    assert report["near_duplicate"]["count"] == 11  # one request, 12 times with a number
    assert report["decision_leak"]["share"] > 0.5 and report["decision_leak"]["status"] == "fail"
    assert "which tool will you use?" in json.dumps(report["decision_leak"]["examples"])


def test_a_run_records_its_audit_and_a_blocking_check_stops_publishing(tmp_path: Path):
    from pipelines.errors import RunError
    from tests.helpers import read_chat_write, run, write_spec

    planted_dataset(tmp_path / "mine.jsonl")
    steps = read_chat_write("openai", "mine.jsonl")
    steps.insert(2, {"id": "audit_chat", "type": "audit", "inputs": ["chat"], "config": {}})
    steps[3]["inputs"] = ["audit_chat"]
    spec = write_spec(tmp_path, steps, audit=None)
    with pytest.raises(RunError, match=r"identity_claim: .* examples: "):
        run(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    import yaml

    data = yaml.safe_load(spec.read_text())
    data["audit"] = {
        "checks": {
            n: {"severity": "warn"}
            for n in ("identity_claim", "undeclared_tool", "argument_schema", "decision_leak", "failed_episode")
        },
    }
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    summary = run(spec, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["audit"]["samples"] == summary.manifest.output.num_rows == 26
    assert manifest["audit"]["checks"]["identity_claim"]["status"] == "warn"
    assert manifest["audit"]["checks"]["identity_claim"]["examples"][0]["excerpt"].startswith("I am Vicuna")
    step_report = manifest["audits"]["audit_chat"]
    assert step_report["samples"] == 26 and step_report["blocking"]  # the step's own policy: defaults
    assert manifest["steps"]["audit_chat"]["passed"] == 26
    assert "Data-quality audit" in (tmp_path / "out" / "report.html").read_text()
    # The command on the output agrees with the run.
    done = agentmill("audit", str(tmp_path / "out"), "--json")
    again = json.loads(done.stdout)
    for name, result in manifest["audit"]["checks"].items():
        assert again[name]["count"] == result["count"], name
        assert again[name]["examples"] == result["examples"], name


def test_spec_audit_block_is_validated(tmp_path: Path):
    import yaml

    from pipelines.errors import SpecError
    from pipelines.graph import load_plan
    from tests.helpers import read_chat_write, write_spec

    spec = write_spec(tmp_path, read_chat_write("openai", "x.jsonl"), audit=None)
    data = yaml.safe_load(spec.read_text())
    data["audit"] = {"checks": {"decision_leek": {"threshold": 0.1}}}
    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="unknown audit check"):
        load_plan(str(spec))


# --- hand counts on real data ----------------------------------------------------------------


@pytest.mark.real_data
def test_failed_episodes_match_a_hand_count_on_fireact(external):
    from pipelines.auditing import samples_of_inputs
    from transforms.quality.auditor import Auditor as _Auditor

    folder = external("fireact", "data", "finetune", "gpt_format")
    by_hand = 0
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            last = json.loads(line)["messages"][-1]
            if last["role"] == "user" and re.search(r"reward = (False|0(\.0+)?)\b", last["content"]):
                by_hand += 1
    policy = AuditPolicy(checks={name: CheckPolicy(enabled=name == "failed_episode") for name in CHECKS})
    report = _Auditor(policy).audit(samples_of_inputs(str(folder / "*.jsonl"), "openai", "agent", []))
    assert by_hand > 0
    assert report.checks["failed_episode"].count == by_hand


@pytest.mark.real_data
def test_undeclared_calls_and_schema_failures_match_a_hand_count_on_glaive(external):
    import jsonschema

    from pipelines.auditing import samples_of_inputs

    path = external("llamafactory_glaive_toolcall", "glaive_toolcall_en_demo.shared80.json")
    samples = list(samples_of_inputs(str(path), "sharegpt", "agent", []))
    undeclared = invalid = with_calls = checkable = 0
    for one in samples:
        tools = {t.name: t.parameters for t in one.tools}
        calls = [c for m in one.messages if m.loss for c in m.tool_calls]
        if not calls:
            continue
        with_calls += 1
        undeclared += any(c.name not in tools for c in calls)
        checked = [c for c in calls if tools.get(c.name)]
        if checked:
            checkable += 1
            bad = False
            for c in checked:
                schema = dict(tools[c.name])
                if schema.get("type") == "object" and "properties" in schema:
                    schema.setdefault("additionalProperties", False)
                try:
                    jsonschema.validate(c.arguments, schema)
                except (jsonschema.ValidationError, jsonschema.SchemaError):
                    bad = True
            invalid += bad
    report = Auditor().audit(samples)
    assert (report.checks["undeclared_tool"].count, report.checks["undeclared_tool"].total) == (undeclared, with_calls)
    assert (report.checks["argument_schema"].count, report.checks["argument_schema"].total) == (invalid, checkable)
    assert with_calls > 50


@pytest.mark.real_data
def test_identity_claims_match_a_hand_count_on_the_fastchat_dummy_set(external):
    from pipelines.auditing import samples_of_inputs

    path = external("fastchat", "data", "dummy_conversation.json")
    samples = list(samples_of_inputs(str(path), "sharegpt", "general", []))
    # Every mention of the model or its makers in an answer of this set is the assistant about itself.
    claim = re.compile(r"\bVicuna\b|Large Model Systems Organi[sz]ation|\bLMSYS\b", re.IGNORECASE)
    by_hand = sum(any(m.loss and claim.search(m.content) for m in s.messages) for s in samples)
    report = Auditor().audit(samples)
    assert by_hand > 100
    assert report.checks["identity_claim"].count == by_hand
