"""Chat templates for training, and the character spans a template makes the model generate.

Templates are Hugging Face chat templates (Jinja2, rendered by ``tokenizer.apply_chat_template``),
so the template saved with the model renders exactly the text trained on. Built-ins live in
``templates/chat/<name>.jinja``: ``llama2`` (AgentTuning, fixed system prompt), ``agent_flan``
(the released Agent-FLAN separators), ``chatml``. ``tokenizer`` selects the tokenizer's own.

Supervised span of an assistant message ``i`` (see :func:`render_with_spans`): the text the model
must generate at inference, i.e. ``render(messages[:i+1])`` minus ``render(messages[:i],
add_generation_prompt=True)``; it includes the turn's end marker (EOS, ``<|im_end|>``, U+0D3F),
and stops before whitespace the template emits after that marker. The template must be
prefix-stable (a rendered prefix of the conversation is a prefix of the full rendering); a
template that is not raises :class:`TemplateError` instead of producing wrong labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "chat"
BUILTIN_TEMPLATES = ("llama2", "agent_flan", "chatml")
LLAMA2_SYSTEM_PROMPT = "You are a helpful, respectful and honest assistant."


class TemplateError(ValueError):
    """The template cannot give exact supervised spans for a conversation."""


@dataclass(frozen=True)
class ChatTemplate:
    """A named Jinja chat template plus what it needs from the tokenizer.

    ``special_tokens``: strings the template emits that must be single tokens (added to the
    tokenizer when missing). ``stop_strings``: end-of-turn markers a generator must stop on.
    """

    name: str
    source: str
    special_tokens: tuple[str, ...] = ()
    stop_strings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


_BUILTIN_META: dict[str, dict[str, tuple[str, ...]]] = {
    "llama2": {"special_tokens": (), "stop_strings": ()},
    "agent_flan": {"special_tokens": (), "stop_strings": ("\u0d3f",)},
    "chatml": {"special_tokens": ("<|im_start|>", "<|im_end|>"), "stop_strings": ("<|im_end|>",)},
}


def load_template(name_or_path: str, tokenizer: Any = None) -> ChatTemplate:
    """A built-in template by name, ``tokenizer`` (the tokenizer's own), or a ``.jinja`` file."""
    if name_or_path in BUILTIN_TEMPLATES:
        source = (TEMPLATE_DIR / f"{name_or_path}.jinja").read_text(encoding="utf-8")
        return ChatTemplate(name_or_path, source, **_BUILTIN_META[name_or_path])
    if name_or_path == "tokenizer":
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates: the default one
            source = source.get("default")
        if not source:
            raise TemplateError("--chat-template tokenizer: the tokenizer has no chat template")
        return ChatTemplate("tokenizer", source)
    path = Path(name_or_path)
    if path.is_file():
        return ChatTemplate(path.stem, path.read_text(encoding="utf-8"))
    raise TemplateError(
        f"unknown chat template {name_or_path!r}: use one of {', '.join(BUILTIN_TEMPLATES)}, "
        "'tokenizer', or a path to a .jinja file"
    )


def render(
    template: ChatTemplate,
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The template rendered exactly as ``tokenizer.apply_chat_template`` renders it."""
    text = tokenizer.apply_chat_template(
        list(messages),
        chat_template=template.source,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )
    if not isinstance(text, str):  # pragma: no cover - defensive against API changes
        raise TemplateError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text


def render_with_spans(
    template: ChatTemplate,
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    supervised: Sequence[bool],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int, int]]]:
    """Render ``messages``; return the text and ``(start, end, message_index)`` character spans.

    One span per message with ``supervised[i]`` true; only assistant messages can be supervised.
    Raises :class:`TemplateError` if the template is not prefix-stable for this conversation or a
    supervised message renders to nothing.
    """
    if len(messages) != len(supervised):
        raise ValueError("messages and supervised flags differ in length")
    full = render(template, tokenizer, messages, tools=tools)
    spans: list[tuple[int, int, int]] = []
    for i, (message, flag) in enumerate(zip(messages, supervised, strict=True)):
        if not flag:
            continue
        if message.get("role") != "assistant":
            raise TemplateError(f"message {i} has loss=true but role {message.get('role')!r}; only assistant")
        prompt = render(template, tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        upto = render(template, tokenizer, messages[: i + 1], tools=tools)
        if not upto.startswith(prompt) or not full.startswith(upto):
            raise TemplateError(
                f"template {template.name!r} is not prefix-stable at message {i}: a rendered prefix of the "
                "conversation is not a prefix of the full rendering, so supervised spans are undefined"
            )
        start, end = len(prompt), len(upto)
        while end > start and upto[end - 1].isspace():  # whitespace after the end-of-turn marker is context
            end -= 1
        if end <= start:
            raise TemplateError(f"supervised message {i} renders to no text with template {template.name!r}")
        if spans and start < spans[-1][1]:
            raise TemplateError(f"supervised spans overlap at message {i}")
        spans.append((start, end, i))
    return full, spans


def ensure_special_tokens(tokenizer: Any, template: ChatTemplate) -> list[str]:
    """Add the template's special tokens the tokenizer lacks; return the added strings."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in template.special_tokens if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return missing


def stop_token_ids(tokenizer: Any, template: ChatTemplate) -> list[int]:
    """Token ids that end an assistant turn: EOS plus stop strings that are single tokens."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for stop in template.stop_strings:
        if stop in vocab and vocab[stop] not in ids:
            ids.append(int(vocab[stop]))
    return ids
