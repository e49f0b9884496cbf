"""Chat templates, the character spans a template makes the model generate, and the round trip
of those spans through the response parser a server would use.

Templates are Hugging Face chat templates (Jinja2, rendered by ``tokenizer.apply_chat_template``
in its sandbox), so the template saved with a model renders exactly the text trained on. Built-ins
live in ``templates/chat/<name>.jinja``: ``llama2`` (AgentTuning, fixed system prompt),
``agent_flan`` (the released Agent-FLAN separators), ``chatml`` (Hermes-style ``<tool_call>``
JSON, as Qwen2.5 renders calls), ``llama3`` (Llama 3.1 JSON calls, ``ipython`` tool results).
``tokenizer`` selects the tokenizer's own. Each built-in ships a *response template*
(``templates/chat/<name>.response.json``, transformers' declarative ``response_template``): what
``tokenizer.parse_response`` and ``transformers serve`` use to turn a generated turn back into
``{content, tool_calls}``.

Supervised span of an assistant message ``i`` (see :func:`render_with_spans`): the text the model
must generate at inference, i.e. ``render(messages[:i+1])`` minus ``render(messages[:i],
add_generation_prompt=True)``; it includes the turn's calls and its end marker (EOS,
``<|im_end|>``, ``<|eot_id|>``, U+0D3F), and stops before whitespace the template emits after that
marker. The template must be prefix-stable (a rendered prefix of the conversation is a prefix of
the full rendering); a template that is not raises :class:`TemplateError` instead of producing
wrong labels.

Round trip (:func:`round_trip`): each supervised span, parsed with the template's response
template and the rendered prompt before it as ``prefix`` (as a server parses a generation), must
give back the same content and the same calls (names and arguments) as the message rendered.

transformers is imported lazily (only rendering and parsing need it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.chat import expected_reply, parsed_reply, reply_mismatch

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "chat"
BUILTIN_TEMPLATES = ("llama2", "agent_flan", "chatml", "llama3")
LLAMA2_SYSTEM_PROMPT = "You are a helpful, respectful and honest assistant."


class TemplateError(ValueError):
    """The template cannot give exact supervised spans for a conversation."""


@dataclass(frozen=True)
class ChatTemplate:
    """A named Jinja chat template plus what it needs from the tokenizer and how its turns parse.

    ``special_tokens``: strings the template emits that must be single tokens (added to the
    tokenizer when missing). ``stop_strings``: end-of-turn markers a generator must stop on.
    ``native_calls``: the template renders an assistant message's ``tool_calls``;
    ``renders_tools``: it renders the ``tools`` it is given. ``response``: the response template
    (transformers' ``response_template`` dict) that parses its assistant turns, or ``None``.
    """

    name: str
    source: str
    special_tokens: tuple[str, ...] = ()
    stop_strings: tuple[str, ...] = ()
    native_calls: bool = False
    renders_tools: bool = False
    response: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


_BUILTIN_META: dict[str, dict[str, Any]] = {
    "llama2": {},
    "agent_flan": {"stop_strings": ("\u0d3f",)},
    "chatml": {
        "special_tokens": ("<|im_start|>", "<|im_end|>"),
        "stop_strings": ("<|im_end|>",),
        "native_calls": True,
        "renders_tools": True,
    },
    "llama3": {
        "special_tokens": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "stop_strings": ("<|eot_id|>",),
        "native_calls": True,
        "renders_tools": True,
    },
}


def read_response_template(path: str | Path) -> dict[str, Any]:
    """A response template from a JSON file, validated by transformers' loader.

    Raises :class:`TemplateError` when it is not JSON or not a valid response template."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TemplateError(f"response template {path}: {exc}") from None
    _compiled(spec, str(path))
    return spec


def serve_response_template(model_type: str | None) -> dict[str, Any] | None:
    """The response template ``transformers serve`` falls back to for a model type whose tokenizer
    ships none (Qwen2/2.5/3 Hermes-style calls, Qwen 3.5, Gemma 4), or ``None``."""
    if not model_type:
        return None
    from types import SimpleNamespace

    from transformers.cli.serving.utils import get_response_template

    model = SimpleNamespace(config=SimpleNamespace(model_type=model_type))
    return get_response_template(SimpleNamespace(response_template=None), model)


def load_template(
    name_or_path: str, tokenizer: Any = None, response_template: str | None = None, model_type: str | None = None
) -> ChatTemplate:
    """A built-in template by name, ``tokenizer`` (the tokenizer's own), or a ``.jinja`` file.

    The response template is ``response_template`` (a JSON file) when given; else the built-in's
    ``<name>.response.json``, the tokenizer's ``response_template`` (for ``tokenizer``; failing
    that, the one ``transformers serve`` uses for ``model_type``), or a ``<stem>.response.json``
    beside a ``.jinja`` file; ``None`` when there is none.
    """
    response = read_response_template(response_template) if response_template else None
    if name_or_path in BUILTIN_TEMPLATES:
        source = (TEMPLATE_DIR / f"{name_or_path}.jinja").read_text(encoding="utf-8")
        if response is None:
            response = read_response_template(TEMPLATE_DIR / f"{name_or_path}.response.json")
        return ChatTemplate(name_or_path, source, response=response, **_BUILTIN_META[name_or_path])
    if name_or_path == "tokenizer":
        source = getattr(tokenizer, "chat_template", None)
        if isinstance(source, dict):  # several named templates: the default one
            source = source.get("default")
        if not source:
            raise TemplateError("--chat-template tokenizer: the tokenizer has no chat template")
        if response is None:
            own = getattr(tokenizer, "response_template", None) or serve_response_template(model_type)
            if own is not None:
                _compiled(own, "the tokenizer's response_template")
                response = own
        return ChatTemplate("tokenizer", source, response=response, **_capabilities(source))
    path = Path(name_or_path)
    if path.is_file():
        source = path.read_text(encoding="utf-8")
        beside = path.with_name(f"{path.stem}.response.json")
        if response is None and beside.is_file():
            response = read_response_template(beside)
        return ChatTemplate(path.stem, source, response=response, **_capabilities(source))
    raise TemplateError(
        f"unknown chat template {name_or_path!r}: use one of {', '.join(BUILTIN_TEMPLATES)}, "
        "'tokenizer', or a path to a .jinja file"
    )


def _capabilities(source: str) -> dict[str, bool]:
    """What a foreign template renders, read from its source: calls if it reads ``tool_calls``,
    tools if it reads ``tools``."""
    return {"native_calls": "tool_calls" in source, "renders_tools": "tools" in source}


@dataclass(frozen=True)
class SpecialTokens:
    """A stand-in for a tokenizer where only rendering is needed (the audit): the special-token
    strings a template may print, rendered by transformers' own sandboxed Jinja renderer."""

    bos_token: str = "<s>"
    eos_token: str = "</s>"

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        chat_template: str,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
    ) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation.")
        rendered, _ = render_jinja_template(
            conversations=[conversation],
            tools=tools,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        return rendered[0]


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
    ``text[:start]`` is exactly the prompt a server would send before that turn. Raises
    :class:`TemplateError` if the template is not prefix-stable for this conversation or a
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
        if i == 0:
            raise TemplateError("message 0 is supervised: an assistant turn needs a prompt before it")
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


_COMPILED: dict[str, Any] = {}


def _compiled(spec: dict[str, Any], where: str) -> Any:
    """transformers' compiled ``ResponseTemplate`` of ``spec`` (cached per process)."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _COMPILED:
        from transformers.utils.chat_parsing.response_templates import load_response_template

        try:
            _COMPILED[key] = load_response_template(spec)
        except (ValueError, TypeError) as exc:
            raise TemplateError(f"{where}: invalid response template: {exc}") from None
    return _COMPILED[key]


def parse_turn(
    template: ChatTemplate, prompt: str, turn: str, tools: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``turn`` (generated text, end marker included) parsed as ``tokenizer.parse_response(turn,
    template.response, prefix=prompt, tools=tools)`` parses it. Raises :class:`TemplateError`
    when the template has no response template, ``ValueError`` when the text does not parse."""
    if template.response is None:
        raise TemplateError(f"template {template.name!r} has no response template to parse its turns")
    from transformers.utils.chat_parsing import parse_response

    return parse_response(turn, _compiled(template.response, template.name), prefix=prompt, tools=tools)


def round_trip(
    template: ChatTemplate,
    text: str,
    spans: Sequence[tuple[int, int, int]],
    messages: Sequence[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> list[tuple[int, str]]:
    """``(message_index, reason)`` for every supervised span of ``render_with_spans`` output that
    does not parse back to its message's content and calls; ``[]`` when all do."""
    failures: list[tuple[int, str]] = []
    for start, end, i in spans:
        try:
            parsed = parse_turn(template, text[:start], text[start:end], tools)
        except TemplateError:
            raise
        except Exception as exc:  # the parser's own errors (bad JSON in a call region, ...)
            failures.append((i, f"parse_error: {type(exc).__name__}: {str(exc)[:200]}"))
            continue
        reason = reply_mismatch(expected_reply(messages[i]), parsed_reply(parsed))
        if reason:
            failures.append((i, reason))
    return failures


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
