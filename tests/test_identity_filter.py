"""identity_filter and the shared identity patterns: claims found, third-person mentions left,
only supervised text counts, drop and mask modes, the ledger by pattern, the real FastChat set."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError

from schemas import Lineage, Message, Role, Sample, count_tokens
from tests.helpers import parse_file, rejected, run, write_spec
from transforms.base import Filtered, Stat, StepContext
from transforms.identity_filter import IdentityFilterConfig, IdentityFilterFn, claims
from transforms.quality.identity import identity_patterns

CLAIMS = [
    "I am ChatGPT, a large language model trained by OpenAI.",
    "As an AI language model developed by OpenAI, I cannot browse the web.",
    "I'm Claude, made by Anthropic.",
    "I was created by a team of researchers at Google.",
    "My developers are engineers from Meta AI.",
    "OpenAI trained me.",
    "As ChatGPT, I can't do that.",
    "I am an AI assistant developed by OpenAI.",
    "You can call me Vicuna.",
    "I'm known as Bard.",
    "I am a large language model, trained by Google.",
    "As a language model, I go by the name Vicuna and was trained by researchers from LMSYS.",
    "Researchers from Large Model Systems Organization (LMSYS) created me.",
    "My creators are researchers from Large Model Systems Organization (LMSYS).",
    "You may refer to me as Vicuna, a language model developed by the researchers at LMSYS.",
    "我是ChatGPT。",
    "我是由OpenAI开发的人工智能助手。",
]

MENTIONS = [  # third-person mentions and near misses: none is a claim about the speaker
    "ChatGPT is a model by OpenAI.",
    "ChatGPT is a language model developed by OpenAI.",
    "Tools such as ChatGPT can draft emails.",
    "I think ChatGPT was trained by OpenAI.",
    "I am sure the model was trained by OpenAI.",
    "I was impressed by OpenAI's demo.",
    "Claude was created by Anthropic, and GPT-4 by OpenAI.",
    "As ChatGPT's documentation explains, tokens matter.",
    "I am a ChatGPT user and I like it.",
    "I'm comparing GPT-4 and Claude.",
    "You can use LLaMA 2, which Meta released.",
    "The model I am describing, GPT-4, was built by OpenAI.",
    "I was trained by my coach at Stanford.",
    "I am not ChatGPT.",
    "ChatGPT是由OpenAI开发的。",
    "Alpacas were domesticated in the Andes.",
]


@pytest.mark.parametrize("text", CLAIMS)
def test_claims_match(text):
    assert identity_patterns().first_match(text) is not None, text


@pytest.mark.parametrize("text", MENTIONS)
def test_third_person_mentions_do_not_match(text):
    assert identity_patterns().first_match(text) is None, text


def test_extra_and_replaced_patterns():
    extra = identity_patterns({"our_old_name": r"\bI am HelperBot\b"})
    assert extra.first_match("Hi, I am HelperBot.") == ("our_old_name", "I am HelperBot")
    assert extra.first_match("I am ChatGPT.")[0] == "self_named"
    only = identity_patterns({"our_old_name": r"\bI am HelperBot\b"}, replace=True)
    assert only.names == ("our_old_name",) and only.first_match("I am ChatGPT.") is None
    with pytest.raises(ValueError, match="does not compile"):
        identity_patterns({"bad": "(unclosed"})


def sample(*turns: tuple[str, str, bool], sid: str = "s1") -> Sample:
    messages = [Message(role=Role.SYSTEM, content="You are a helpful assistant.")]
    messages += [Message(role=Role(role), content=text, loss=loss) for role, text, loss in turns]
    return Sample(
        id=sid,
        kind="general",
        messages=messages,
        lineage=Lineage(source="test", source_id=sid, steps=["chat"]),
        counts=count_tokens(messages),
    )


def outcomes(s: Sample, **config) -> tuple[list, Counter]:
    fn = IdentityFilterFn(IdentityFilterConfig(**config), StepContext(step_id="identity"))
    results = list(fn(s))
    stats = Counter({r.name: r.value for r in results if isinstance(r, Stat)})
    return [r for r in results if not isinstance(r, Stat)], stats


def test_drop_names_the_pattern_and_the_text():
    claim = sample(("user", "Who are you?", False), ("assistant", "I am Vicuna, trained by LMSYS.", True))
    (result,), stats = outcomes(claim)
    assert isinstance(result, Filtered) and result.reason == "identity_claim"
    assert "'self_named'" in result.detail and "I am Vicuna" in result.detail and "message 2" in result.detail
    assert stats == {"pattern:self_named": 1}


def test_only_supervised_assistant_text_counts():
    clean = sample(
        ("user", "Are you ChatGPT? I am ChatGPT, says my friend.", False),
        ("assistant", "I am ChatGPT.", False),  # an unsupervised in-context example
        ("assistant", "I'm an assistant. How can I help?", True),
    )
    (result,), stats = outcomes(clean)
    assert result == clean and not stats
    # checking unsupervised text too is a config choice
    (result,), _ = outcomes(clean, supervised_only=False)
    assert isinstance(result, Filtered)
    (result,), _ = outcomes(clean, supervised_only=False, roles=["user"])
    assert isinstance(result, Filtered) and "message 1" in result.detail


def test_mask_unsupervises_the_claim_and_keeps_the_rest():
    mixed = sample(
        ("user", "Who are you?", False),
        ("assistant", "I am Vicuna, a language model trained by researchers from LMSYS.", True),
        ("user", "What is 2 + 2?", False),
        ("assistant", "2 + 2 = 4.", True),
    )
    (result,), stats = outcomes(mixed, mode="mask")
    assert isinstance(result, Sample) and result.id == mixed.id
    assert [m.loss for m in result.messages] == [False, False, False, False, True]
    assert result.messages[2].content == mixed.messages[2].content
    assert result.counts.supervised_tokens == 5 and result.counts.tokens == mixed.counts.tokens
    assert result.lineage.steps == ["chat", "identity"]
    assert stats == {"pattern:self_named": 1, "masked_messages": 1}
    only_claim = sample(("user", "Who are you?", False), ("assistant", "OpenAI trained me.", True))
    (result,), _ = outcomes(only_claim, mode="mask")
    assert isinstance(result, Filtered) and "no supervised message left" in result.detail


def test_config_is_validated_early():
    with pytest.raises(ValidationError, match="does not compile"):
        IdentityFilterConfig(patterns={"bad": "(unclosed"})
    with pytest.raises(ValidationError):
        IdentityFilterConfig(mode="rewrite")
    with pytest.raises(ValidationError):
        IdentityFilterConfig(unknown=1)
    with pytest.raises(ValidationError):
        IdentityFilterConfig(roles=[])


@pytest.mark.real_data
def test_fastchat_dummy_set_is_all_identity_claims(external, tmp_path):
    """FastChat's dummy conversations are LMSYS's identity Q&A for Vicuna (its PROVENANCE.md):
    every one of the 500 supervises a claim, and the step drops all of them, by pattern."""
    path = external("fastchat", "data", "dummy_conversation.json")
    records = json.loads(path.read_text())
    spec = write_spec(
        tmp_path,
        [
            {"id": "read", "type": "read", "config": {"format": "sharegpt", "paths": str(path), "source": "fastchat"}},
            {"id": "chat", "type": "to_chat", "inputs": ["read"], "config": {"kind": "general"}},
            {"id": "identity", "type": "identity_filter", "inputs": ["chat"]},
            {"id": "write", "type": "write", "inputs": ["identity"]},
        ],
        publish={"allow_empty": True},  # every sample is dropped, on purpose
    )
    summary = run(spec, tmp_path / "out")
    ledger = summary.manifest.steps["identity"]
    assert ledger.in_ == len(records) == 500
    assert ledger.passed == 0 and ledger.filtered == {"identity_claim": 500}
    by_pattern = summary.manifest.ratios["identity"]["by_pattern"]
    assert sum(by_pattern.values()) == 500 and by_pattern["made_by"] > by_pattern["self_named"] > 0
    assert {k: v for k, v in ledger.stats.items() if k.startswith("pattern:")} == {
        f"pattern:{k}": v for k, v in by_pattern.items()
    }
    dropped = rejected(tmp_path / "out", "identity")
    assert len(dropped) == 500 and all(r["reason"] == "identity_claim" for r in dropped)
    # and the same patterns find no claim in the recipe's other general data (GPT-4 answers)
    patterns = identity_patterns()
    arena = external("arena_hard_auto", "data", "arena-hard-v0.1", "model_answer", "gpt-4-0314.jsonl")
    answers, _ = parse_file(arena, "openai")
    assert len(answers) == 500
    assert not [t.id for t in answers for turn in t.turns if turn.loss and patterns.first_match(turn.text)]


def test_claims_lists_every_checked_message():
    s = sample(
        ("assistant", "I am ChatGPT.", True),
        ("assistant", "Hello.", True),
        ("assistant", "OpenAI trained me.", True),
    )
    found = claims(s, IdentityFilterConfig(), identity_patterns())
    assert [(i, name) for i, name, _ in found] == [(1, "self_named"), (3, "makers_made_me")]
