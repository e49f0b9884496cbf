"""trim_closings: a trailing thanks / you're-welcome exchange removed (or masked) only when the
user asks for nothing more, the reply is a bare acknowledgement and an answer came before; the
id follows the turns; the step in a pipeline with its ledger; glaive's real conversations."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError

from schemas import Role, ToolCall, Trajectory, Turn, trajectory_id
from tests.helpers import parse_file, run, write_spec
from transforms.base import Stat
from transforms.trim_closings import TrimClosingsConfig, TrimClosingsFn

ANSWER = [
    Turn(role=Role.USER, text="Convert 500 USD to EUR."),
    Turn(role=Role.ASSISTANT, text="", loss=True, tool_calls=[ToolCall(name="convert", arguments={"amount": 500})]),
    Turn(role=Role.TOOL, text='{"converted": 425.5}'),
    Turn(role=Role.ASSISTANT, text="500 USD is about 425.50 EUR.", loss=True),
]


def trajectory(*tail: tuple[Role, str], head: list[Turn] | None = None) -> Trajectory:
    turns = [*(ANSWER if head is None else head), *(Turn(role=r, text=t, loss=r is Role.ASSISTANT) for r, t in tail)]
    return Trajectory(id=trajectory_id("glaive", "1", turns), source="glaive", source_id="1", turns=turns)


def apply(t: Trajectory, **config) -> tuple[Trajectory, dict[str, int]]:
    outcomes = list(TrimClosingsFn(TrimClosingsConfig(**config))(t))
    stats = {o.name: o.value for o in outcomes if isinstance(o, Stat)}
    records = [o for o in outcomes if isinstance(o, Trajectory)]
    assert len(records) == 1
    return records[0], stats


CLOSINGS = [
    ("Thank you for your help!", "You're welcome! If you have any other questions, feel free to ask."),
    (
        "Oh, time flies! Thank you for the information.",
        "You're welcome! If you have any other questions, feel free to ask.",
    ),
    ('Great! I think I\'ll start with "Dune". Thanks for the help!', "You're welcome! I hope you enjoy the book."),
    ("Perfect, thanks!", "My pleasure. Have a great day!"),
    ("谢谢你的帮助！", "不客气！如果你还有其他问题，随时可以问。"),
    ("是的，它是“月之暗面”。谢谢你！", "不客气！如果您需要更多帮助，随时提问。"),
]


@pytest.mark.parametrize(("thanks", "reply"), CLOSINGS)
def test_a_closing_exchange_is_cut_and_the_answer_ends_the_trajectory(thanks, reply):
    original = trajectory((Role.USER, thanks), (Role.ASSISTANT, reply))
    trimmed, stats = apply(original)
    assert trimmed.turns == ANSWER
    assert trimmed.id == trajectory_id("glaive", "1", ANSWER) != original.id
    assert trimmed.model_dump(exclude={"turns", "id"}) == original.model_dump(exclude={"turns", "id"})
    assert stats == {"trimmed": 1, "exchanges": 1, "source:glaive": 1}


KEPT = {
    "a new request after the thanks": [
        (Role.USER, "Thanks! Can you also convert 1000 EUR?"),
        (Role.ASSISTANT, "You're welcome! Sure."),
    ],
    "a request without a question mark": [
        (Role.USER, "Thanks, please book it too."),
        (Role.ASSISTANT, "You're welcome!"),
    ],
    "a Chinese request": [(Role.USER, "好的，谢谢！你也能帮我订票吗"), (Role.ASSISTANT, "不客气！")],
    "no thanks": [
        (Role.USER, "OK."),
        (Role.ASSISTANT, "You're welcome! If you have any other questions, feel free to ask."),
    ],
    "a reply that is not an acknowledgement": [
        (Role.USER, "Thank you!"),
        (Role.ASSISTANT, "One more thing: rates change daily."),
    ],
    "a reply with more than courtesy": [
        (Role.USER, "Thank you!"),
        (Role.ASSISTANT, "You're welcome! " + "Note that rates change daily. " * 8),
    ],
    "a last user turn": [(Role.ASSISTANT, "Anything else?"), (Role.USER, "Thank you!")],
}


@pytest.mark.parametrize("tail", KEPT.values(), ids=list(KEPT))
def test_an_exchange_that_is_not_only_courtesy_stays(tail):
    original = trajectory(*tail)
    kept, stats = apply(original)
    assert kept == original and stats == {}


def test_a_reply_that_calls_a_tool_or_an_exchange_after_no_answer_stays():
    calling = trajectory((Role.USER, "Thank you!"))
    calling.turns.append(
        Turn(role=Role.ASSISTANT, text="You're welcome!", loss=True, tool_calls=[ToolCall(name="log", arguments={})])
    )
    assert apply(calling)[0] == calling
    after_a_result = trajectory((Role.USER, "Thank you!"), (Role.ASSISTANT, "You're welcome!"), head=ANSWER[:3])
    assert apply(after_a_result)[0] == after_a_result  # cutting would leave a tool result last
    only_courtesy = trajectory((Role.USER, "Thanks!"), (Role.ASSISTANT, "You're welcome!"), head=[])
    assert apply(only_courtesy)[0] == only_courtesy


def test_several_closing_exchanges_are_cut_and_mask_mode_keeps_them_unsupervised():
    original = trajectory(
        (Role.USER, "Thank you!"),
        (Role.ASSISTANT, "You're welcome!"),
        (Role.USER, "Bye!"),
        (Role.ASSISTANT, "Anytime, goodbye!"),
    )
    trimmed, stats = apply(original)
    assert trimmed.turns == ANSWER and stats["exchanges"] == 2
    masked, stats = apply(original, mode="mask")
    assert [t.text for t in masked.turns] == [t.text for t in original.turns]
    assert [t.loss for t in masked.turns[4:]] == [False, False, False, False]
    assert masked.turns[:4] == ANSWER and masked.id == trajectory_id("glaive", "1", masked.turns)
    assert stats == {"masked": 1, "exchanges": 2, "source:glaive": 1}


def test_config_adds_or_replaces_patterns_and_rejects_one_that_does_not_compile():
    cheers = trajectory((Role.USER, "Cheers, mate."), (Role.ASSISTANT, "No worries at all!"))
    assert apply(cheers)[0] == cheers
    added = {"thanks": [r"\bcheers\b"], "acknowledgement": ["no worries"]}
    assert apply(cheers, patterns=added)[0].turns == ANSWER
    thanks = trajectory((Role.USER, "Thank you!"), (Role.ASSISTANT, "You're welcome!"))
    assert apply(thanks, patterns=added, replace=True)[0] == thanks  # the built-in thanks are gone
    assert apply(thanks, max_reply_chars=5)[0] == thanks
    with pytest.raises(ValidationError, match="does not compile"):
        TrimClosingsConfig(patterns={"thanks": ["(unclosed"]})
    with pytest.raises(ValidationError):
        TrimClosingsConfig(patterns={"answers": ["x"]})


def test_the_step_in_a_pipeline_accounts_for_every_trajectory(tmp_path):
    conversations = [
        [
            ("human", "Convert 5 km to miles."),
            ("gpt", "5 km is 3.11 miles."),
            ("human", "Thanks!"),
            ("gpt", "You're welcome!"),
        ],
        [
            ("human", "Convert 5 km to miles."),
            ("gpt", "5 km is 3.11 miles."),
            ("human", "And 10 km?"),
            ("gpt", "6.21 miles."),
        ],
    ]
    data = tmp_path / "chat.json"
    data.write_text(json.dumps([{"conversations": [{"from": f, "value": v} for f, v in c]} for c in conversations]))
    spec = write_spec(
        tmp_path,
        [
            {"id": "read", "type": "read", "config": {"format": "sharegpt", "paths": str(data), "source": "glaive"}},
            {"id": "closings", "type": "trim_closings", "inputs": ["read"]},
            {"id": "chat", "type": "to_chat", "inputs": ["closings"]},
            {"id": "write", "type": "write", "inputs": ["chat"]},
        ],
    )
    summary = run(spec, tmp_path / "out")
    ledger = summary.manifest.steps["closings"]
    assert (ledger.in_, ledger.passed, ledger.emitted) == (2, 2, 2)
    assert summary.manifest.ratios["closings"] == {
        "mode": "trim",
        "in": 2,
        "changed": 1,
        "exchanges": 1,
        "by_source": {"glaive": 1},
    }
    assert summary.manifest.output.num_rows == 2


@pytest.mark.real_data
def test_glaive_closings_are_found_and_nothing_else_is_touched(external):
    """Every glaive conversation whose last reply opens with an acknowledgement is one the rule
    cuts, and what it cuts is always a thanks and an acknowledgement."""
    trajectories = []
    for name in ("glaive_toolcall_en_demo.shared80.json", "glaive_toolcall_zh_demo.shared80.json"):
        parsed, failed = parse_file(external("llamafactory_glaive_toolcall", name), "sharegpt")
        assert not failed
        trajectories += parsed
    unique = {json.dumps([t.model_dump(mode="json") for t in x.turns]): x for x in trajectories}.values()
    cut = Counter()
    for original in unique:
        trimmed, _ = apply(original)
        last = original.turns[-1].text.strip()
        acknowledges = last.lower().startswith(("you're welcome", "不客气"))
        assert (len(trimmed.turns) < len(original.turns)) == acknowledges, last
        if acknowledges:
            assert len(original.turns) - len(trimmed.turns) == 2
            cut["zh" if last.startswith("不客气") else "en"] += 1
    assert cut == {"en": 26, "zh": 31}  # 57 of the 396 distinct conversations
