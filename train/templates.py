"""Chat templates for training: :mod:`schemas.chat_templates`, re-exported for ``train/``.

The templates, their supervised spans and the round trip through the response parser live below
``train/`` and ``transforms/`` so that training and the audit's ``round_trip`` check render and
parse the same way; see that module for the guarantees (prefix stability, span contents).
"""

from __future__ import annotations

from schemas.chat_templates import (
    BUILTIN_TEMPLATES,
    LLAMA2_SYSTEM_PROMPT,
    TEMPLATE_DIR,
    ChatTemplate,
    SpecialTokens,
    TemplateError,
    ensure_special_tokens,
    load_template,
    parse_turn,
    read_response_template,
    render,
    render_with_spans,
    round_trip,
    serve_response_template,
    stop_token_ids,
)

__all__ = [
    "BUILTIN_TEMPLATES",
    "LLAMA2_SYSTEM_PROMPT",
    "TEMPLATE_DIR",
    "ChatTemplate",
    "SpecialTokens",
    "TemplateError",
    "ensure_special_tokens",
    "load_template",
    "parse_turn",
    "read_response_template",
    "render",
    "render_with_spans",
    "round_trip",
    "serve_response_template",
    "stop_token_ids",
]
