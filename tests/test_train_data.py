"""Chat templates and labels: exact template bytes, and labels that supervise exactly the loss=true
messages, checked against formatters written out by hand here (not the Jinja templates)."""

from __future__ import annotations

import pytest
from train_helpers import demo_shards, tiny_assets

from schemas.chat import message_dict
from schemas.sample import Capability, Lineage, Message, Sample
from schemas.trajectory import Role
from train.data import (
    GROUP_INDEX,
    GROUPS,
    IGNORE_INDEX,
    Dropped,
    TokenizedSample,
    chat_messages,
    load_samples,
    tokenize_all,
    tokenize_sample,
)
from train.templates import (
    BUILTIN_TEMPLATES,
    LLAMA2_SYSTEM_PROMPT,
    TemplateError,
    ensure_special_tokens,
    load_template,
    render,
    render_with_spans,
)

MAL_OPEN, MAL_CLOSE = "\u0d46", "\u0d3f"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    tok_dir, _ = tiny_assets(tmp_path_factory.getbasetemp())
    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def demo_samples(tmp_path_factory) -> list[Sample]:
    return load_samples([str(demo_shards(tmp_path_factory.getbasetemp()))])


def msg(role: str, content: str, loss: bool = False, capability: Capability | None = None) -> Message:
    return Message(role=Role(role), content=content, loss=loss, capability=capability)


def make_sample(messages: list[Message], kind: str = "agent") -> Sample:
    return Sample(id="s1", kind=kind, messages=messages, lineage=Lineage(source="test", source_id="1"))


AGENT = make_sample(
    [
        msg("system", "You are an agent. Tools: search."),
        msg("user", "Find the capital of France."),
        msg("assistant", "Ok.", loss=False),
        msg("user", "Go."),
        msg("assistant", "Thought: I should search.\nAction: search[France capital]", True, Capability.REASONING),
        msg("tool", '{"result": "Paris"}'),
        msg("assistant", "Final Answer: Paris", loss=True),
    ]
)


# ---- hand-written formatters: (text, supervised strings with their offsets) -------------------


def by_hand(template: str, messages: list[Message]) -> tuple[str, list[tuple[int, str]]]:
    """The exact text of each built-in template and the strings the model must generate."""
    out, spans = "", []

    def add(piece: str, supervised: str | None = None) -> None:
        nonlocal out
        if supervised is not None:
            spans.append((len(out) + piece.index(supervised), supervised))
        out += piece

    if template == "llama2":
        system, rest = LLAMA2_SYSTEM_PROMPT, messages
        if messages[0].role is Role.SYSTEM:
            system, rest = messages[0].content, messages[1:]
        for k, m in enumerate(rest):
            if m.role is Role.ASSISTANT:
                piece = " " + m.content.strip() + " </s>"
                add(piece, piece if m.loss else None)
            else:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{m.content}" if k == 0 else m.content
                add("<s>[INST] " + content.strip() + " [/INST]")
    elif template == "chatml":  # tool results: one user turn of <tool_response> blocks per run of them
        for k, m in enumerate(messages):
            if m.role is Role.TOOL:
                opens = k == 0 or messages[k - 1].role is not Role.TOOL
                closes = k == len(messages) - 1 or messages[k + 1].role is not Role.TOOL
                block = f"\n<tool_response>\n{m.content}\n</tool_response>"
                add(("<|im_start|>user" if opens else "") + block + ("<|im_end|>\n" if closes else ""))
            else:
                add(
                    f"<|im_start|>{m.role.value}\n{m.content}<|im_end|>\n", m.content + "<|im_end|>" if m.loss else None
                )
    elif template == "llama3":
        add("<s>")
        for m in messages:
            role = "ipython" if m.role is Role.TOOL else m.role.value
            supervised = m.content + "<|eot_id|>" if m.loss else None
            add(f"<|start_header_id|>{role}<|end_header_id|>\n\n{m.content}<|eot_id|>", supervised)
    elif template == "agent_flan":
        add("<s>")
        for m in messages:
            if m.role is Role.ASSISTANT:
                add(f"<|Assistant|>{MAL_OPEN}{m.content}{MAL_CLOSE}\n ", m.content + MAL_CLOSE if m.loss else None)
            else:
                add(f"<|Human|>{MAL_OPEN}{m.content}\n ")
    else:
        raise AssertionError(template)
    return out, spans


def supervised_runs(tokenized: TokenizedSample) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = False
    for tid, label in zip(tokenized.input_ids, tokenized.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == tid
            if not previous:
                runs.append([])
            runs[-1].append(label)
        previous = label != IGNORE_INDEX
    return runs


# ---- template text -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_template_renders_exact_bytes(name, tokenizer):
    template = load_template(name)
    for sample in (AGENT, make_sample(AGENT.messages[1:])):
        messages, _, _ = chat_messages(sample)
        expected, _ = by_hand(name, sample.messages)
        assert render(template, tokenizer, messages) == expected


def test_agent_flan_separators_are_the_released_bytes(tokenizer):
    text = render(
        load_template("agent_flan"), tokenizer, [{"role": "user", "content": "u"}], add_generation_prompt=True
    )
    assert text.encode() == b"<s><|Human|>\xe0\xb5\x86u\n <|Assistant|>\xe0\xb5\x86"
    assert "\u0d3f\n ".encode() == b"\xe0\xb4\xbf\n "
    done = render(load_template("agent_flan"), tokenizer, [{"role": "assistant", "content": "a"}])
    assert done.endswith("<|Assistant|>\u0d46a\u0d3f\n ")


def test_llama2_uses_agenttuning_system_prompt_by_default(tokenizer):
    text = render(load_template("llama2"), tokenizer, [{"role": "user", "content": "hi"}])
    assert text == "<s>[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\nhi [/INST]"


def test_tokenizer_template_and_file_template(tokenizer, tmp_path):
    with pytest.raises(TemplateError):
        load_template("tokenizer", tokenizer)  # the tiny tokenizer has none
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    template = load_template(str(path))
    assert render(template, tokenizer, [{"role": "user", "content": "x"}]) == "[user]x"
    with pytest.raises(TemplateError):
        load_template("no-such-template")


def test_non_prefix_stable_template_is_refused(tokenizer):
    # Renders only the last message: a prefix of the conversation is not a prefix of the whole.
    from train.templates import ChatTemplate

    template = ChatTemplate("last-only", "{{ messages[-1]['content'] }}")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(TemplateError, match="prefix-stable"):
        render_with_spans(template, tokenizer, messages, [False, True])


# ---- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_labels_supervise_exactly_the_loss_true_messages(name, tokenizer):
    template = load_template(name)
    ensure_special_tokens(tokenizer, template)
    result = tokenize_sample(AGENT, tokenizer, template, max_seq_len=4096)
    assert isinstance(result, TokenizedSample)
    text, spans = by_hand(name, AGENT.messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert result.input_ids == list(encoding["input_ids"])
    # Independent label computation from the hand-written spans.
    expected = [
        tid if any(start <= s < start + len(sup) for start, sup in spans) else IGNORE_INDEX
        for tid, (s, _) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)
    ]
    assert result.labels == expected
    # Each supervised run decodes to exactly one loss=true message's text plus its end-of-turn marker.
    runs = supervised_runs(result)
    assert [tokenizer.decode(r) for r in runs] == [sup for _, sup in spans]
    assert len(runs) == sum(m.loss for m in AGENT.messages) == 2
    # The "Ok." turn (loss=false) and the user/tool turns are never supervised.
    assert "Ok." not in "".join(tokenizer.decode(r) for r in runs)
    # EOS / end-of-turn marker included in the labels.
    end = {"llama2": tokenizer.eos_token, "chatml": "<|im_end|>", "agent_flan": MAL_CLOSE, "llama3": "<|eot_id|>"}[name]
    assert all(tokenizer.decode(r).endswith(end) for r in runs)
    # Groups: the reasoning-tagged turn, then the untagged one under the sample kind.
    sup_groups = [GROUPS[g] for g, lab in zip(result.groups, result.labels, strict=True) if lab != IGNORE_INDEX]
    first = len(runs[0])
    assert set(sup_groups[:first]) == {"reasoning"} and set(sup_groups[first:]) == {"agent"}
    assert result.n_supervised == sum(len(r) for r in runs)


def merge_adjacent(spans: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Supervised ``(start, text)`` spans, those that touch in the text joined into one."""
    merged: list[tuple[int, str]] = []
    for start, text in spans:
        if merged and merged[-1][0] + len(merged[-1][1]) == start:
            merged[-1] = (merged[-1][0], merged[-1][1] + text)
        else:
            merged.append((start, text))
    return merged


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_labels_on_demo_shards_match_hand_formatting(name, tokenizer, demo_samples):
    template = load_template(name)
    ensure_special_tokens(tokenizer, template)
    assert demo_samples
    for sample in demo_samples:
        # Plain formatting (tools and native calls are tests/test_chat_templates.py's): calls as text.
        result = tokenize_sample(sample, tokenizer, template, max_seq_len=1 << 16, render_tools=False)
        assert isinstance(result, TokenizedSample), result
        last = max(i for i, m in enumerate(sample.messages) if m.loss)
        as_text = [m.model_copy(update={"content": message_dict(m, native=False)["content"]}) for m in sample.messages]
        text, spans = by_hand(name, as_text[: last + 1])
        assert tokenizer.decode(result.input_ids) == text
        runs = [tokenizer.decode(r) for r in supervised_runs(result)]
        assert len(spans) == sum(m.loss for m in sample.messages)
        spans = merge_adjacent(spans)  # consecutive supervised assistant messages form one run
        assert len(runs) == len(spans)
        if result.straddling_tokens == 0:
            assert runs == [sup for _, sup in spans]
        else:  # a token merged the prompt's last bytes with the answer's first: the rest is supervised
            assert name == "agent_flan"
            assert all(sup.endswith(run) and len(run) > 0 for run, (_, sup) in zip(runs, spans, strict=True))
        groups = {GROUPS[g] for g, lab in zip(result.groups, result.labels, strict=True) if lab != IGNORE_INDEX}
        wanted = {m.capability.value if m.capability else sample.kind for m in sample.messages if m.loss}
        assert groups == wanted


def test_trailing_context_dropped_and_system_prompt_inserted(tokenizer):
    sample = make_sample([msg("user", "q"), msg("assistant", "a", True), msg("user", "thanks")])
    messages, flags, groups = chat_messages(sample, system_prompt="Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert flags == [False, False, True]
    assert groups == [-1, -1, GROUP_INDEX["agent"]]
    # An existing system message is kept, not doubled.
    messages, _, _ = chat_messages(AGENT, system_prompt="Other.")
    assert [m["role"] for m in messages].count("system") == 1
    assert messages[0]["content"] == "You are an agent. Tools: search."


def test_truncation_is_reported_not_silent(tokenizer):
    template = load_template("chatml")
    ensure_special_tokens(tokenizer, template)
    long_user = "word " * 300
    gone = make_sample([msg("user", long_user), msg("assistant", "short answer", True)])
    partial = make_sample(
        [
            msg("user", "q"),
            msg("assistant", "first answer", True),
            msg("user", long_user),
            msg("assistant", "second answer", True),
        ]
    )
    none = make_sample([msg("user", "q"), msg("assistant", "a", False)])
    max_len = 64
    result = tokenize_sample(gone, tokenizer, template, max_len)
    assert isinstance(result, Dropped) and result.reason == "truncated_all_supervised"
    kept = tokenize_sample(partial, tokenizer, template, max_len)
    assert isinstance(kept, TokenizedSample) and kept.truncated and len(kept) == max_len
    assert tokenizer.decode(supervised_runs(kept)[0]) == "first answer<|im_end|>"
    assert tokenize_sample(none, tokenizer, template, max_len).reason == "no_supervised_tokens"

    samples = [
        gone.model_copy(update={"id": "gone"}),
        partial.model_copy(update={"id": "partial"}),
        none.model_copy(update={"id": "none"}),
    ]
    tokenized, report = tokenize_all(samples, tokenizer, template, max_len)
    assert [t.id for t in tokenized] == ["partial"]
    assert report.samples_in == 3 and report.samples_kept == 1 and report.samples_truncated == 1
    assert report.dropped == {"truncated_all_supervised": 1, "no_supervised_tokens": 1}
    assert report.dropped_examples["truncated_all_supervised"][0].startswith("gone")
    assert report.supervised_tokens == kept.n_supervised


def test_loss_on_a_non_assistant_message_is_dropped_with_reason(tokenizer):
    sample = make_sample([msg("user", "q", loss=True), msg("assistant", "a")])
    result = tokenize_sample(sample, tokenizer, load_template("llama2"), 512)
    assert isinstance(result, Dropped) and result.reason == "template_error"


def test_chatml_special_tokens_are_single_tokens(tokenizer):
    ensure_special_tokens(tokenizer, load_template("chatml"))
    ids = tokenizer("<|im_start|>user\nx<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "<|im_start|>"
    assert tokenizer.convert_ids_to_tokens(ids)[-1] == "<|im_end|>"


def test_tools_reach_the_template_by_default_and_no_tools_turns_them_off(tokenizer, tmp_path):
    from schemas.tools import ToolSpec

    path = tmp_path / "tools.jinja"
    path.write_text(
        "{% if tools %}TOOLS:{% for t in tools %}{{ t['function']['name'] }};{% endfor %}{% endif %}"
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    template = load_template(str(path))
    sample = make_sample([msg("user", "q"), msg("assistant", "a", True)]).model_copy(
        update={"tools": [ToolSpec(name="search", description="web search")]}
    )
    with_tools = tokenize_sample(sample, tokenizer, template, 512)
    without = tokenize_sample(sample, tokenizer, template, 512, render_tools=False)
    assert tokenizer.decode(with_tools.input_ids) == "TOOLS:search;[user]q[assistant]a"
    assert tokenizer.decode(without.input_ids) == "[user]q[assistant]a"
    assert [tokenizer.decode(r) for r in supervised_runs(with_tools)] == ["a"]
