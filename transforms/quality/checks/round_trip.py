"""``round_trip``: whether what a sample supervises, rendered by a named chat template, parses back
to the same content and calls with the response parser a server would use.

The sample is rendered exactly as ``train/sft.py`` renders it (:mod:`schemas.chat`,
:mod:`schemas.chat_templates`: native ``tool_calls`` and ``tools`` where the template renders
them), each supervised assistant span is parsed by transformers' ``parse_response`` with the
template's response template and the prompt before it as ``prefix``, and the parsed content and
calls (names, canonical JSON arguments) must equal the message's. (Samples are judged one by one:
a call-free sample gets the template's tool block even when training would leave it out because
its whole data set spells calls in text; the block is prompt, which parsing does not read.) Off unless the audit policy
names a template (``options: {template: chatml}``); transformers is imported only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas import Role, Sample
from schemas.chat import conversation, template_tools
from schemas.chat_templates import (
    BUILTIN_TEMPLATES,
    ChatTemplate,
    SpecialTokens,
    TemplateError,
    load_template,
    render_with_spans,
    round_trip,
)
from transforms.quality.check import SampleCheck, Verdict


class RoundTripOptions(BaseModel):
    """``template``: a built-in name or a ``.jinja`` path (relative to the spec's folder);
    ``response_template``: a JSON file (default: the template's own); ``bos_token`` /
    ``eos_token``: the strings the template prints for them; ``tools``: render tools and native
    calls where the template can (as training does by default)."""

    model_config = ConfigDict(extra="forbid")

    template: str | None = Field(None, min_length=1)
    response_template: str | None = None
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    tools: bool = True


class RoundTrip(SampleCheck):
    name = "round_trip"
    definition = (
        "Share of samples with a supervised assistant turn where a turn, rendered by the named chat "
        "template (tools and native calls included where it renders them), does not parse back with "
        "the template's response template (transformers' parse_response, the prompt as prefix) to the "
        "same content and the same calls (names and JSON arguments); a conversation the template "
        "cannot render with exact spans fails as 'template_error'. Runs only when a template is named."
    )
    threshold = 0.0
    severity = "block"
    Options = RoundTripOptions

    def configured(self) -> bool:
        return self.options.template is not None  # type: ignore[attr-defined]

    def _resolve(self, path: str) -> str:
        if path in BUILTIN_TEMPLATES or Path(path).is_absolute():
            return path
        return str(Path(self.env.base_dir) / path)

    def setup(self) -> None:
        if getattr(self, "_template", None) is not None:
            return
        options: Any = self.options
        response = self._resolve(options.response_template) if options.response_template else None
        template: ChatTemplate = load_template(self._resolve(options.template), None, response)
        if template.response is None:
            raise TemplateError(
                f"round_trip: template {options.template!r} has no response template "
                "(give options.response_template, or a <name>.response.json beside the .jinja file)"
            )
        self._template = template
        self._renderer = SpecialTokens(options.bos_token, options.eos_token)

    def inspect(self, sample: Sample) -> Verdict | None:
        if not any(m.loss and m.role is Role.ASSISTANT for m in sample.messages):
            return None
        self.setup()
        template, options = self._template, self.options
        use_tools: bool = options.tools  # type: ignore[attr-defined]
        messages, flags, _ = conversation(sample, None, use_tools and template.native_calls)
        tools = template_tools(sample) if use_tools and template.renders_tools else None
        try:
            text, spans = render_with_spans(template, self._renderer, messages, flags, tools)
        except (TemplateError, ValueError) as exc:
            return Verdict(True, str(exc), "template_error")
        failures = round_trip(template, text, spans, messages, tools)
        if not failures:
            return Verdict(False)
        index, reason = failures[0]
        return Verdict(True, f"message {index}: {reason}", reason.split(":", 1)[0])
