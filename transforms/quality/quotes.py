"""Quotes a reply makes up: text an answer puts in quotation marks, right after a tool result,
that no earlier message holds.

A reply that quotes ("The tool found “阿呆与阿瓜”", 《基地》, "Record inserted successfully.")
claims to repeat something verbatim. When neither the tool results nor anything else before the
reply holds that text, the quote is invented: glaive's Chinese demos were machine-translated
turn by turn, so a title the tool returned as 笨蛋与更笨的人 comes back in the answer as 阿呆与阿瓜,
a review as another sentence. A model trained on such answers learns to misquote its tools.

Guarantees: :func:`misquoted_replies` is a pure function of the messages. Judged are the
supervised assistant messages that make no call (no structured call, tool choice, arguments part
or ReAct action line) and directly follow a ``tool`` message; of a JSON reply only its
``"answer"`` value is read. A quote is the text inside “...”, 《...》, 「...」 or straight double
quotes (not escaped, not inside a word). It is *grounded* when, after Unicode normalisation
(NFKC), ``\\uXXXX`` escapes decoded, case folded and whitespace collapsed, it occurs in an
earlier message's text or call arguments, as a whole or word by word. Quotes of at most
``short`` (4) ASCII letters and digits are not judged: protocol words ("none", "yes") and
tickers are not quotations.
"""

from __future__ import annotations

import json
import re
import unicodedata

from schemas import Message, Role, Sample
from transforms.quality.check import is_call

QUOTE = re.compile(
    r"“([^“”\n]{1,120})”"  # curly quotes
    r"|《([^《》\n]{1,120})》|「([^「」\n]{1,120})」"  # Chinese title and corner brackets
    r'|(?<![\w\\])"([^"\n]{1,120})"(?!\w)'  # straight double quotes, not escaped or inside a word
)
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def normalise(text: str) -> str:
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def reply_text(message: Message) -> str:
    """What a reply says: its content, or the ``"answer"`` value of a JSON object reply."""
    content = message.content.strip()
    if content.startswith("{") and content.endswith("}"):
        try:
            parsed = json.loads(content)
        except ValueError:
            return message.content
        if isinstance(parsed, dict):
            answer = parsed.get("answer")
            return answer if isinstance(answer, str) else ""
    return message.content


def quotes(text: str, short: int = 4) -> list[str]:
    """The quoted spans of ``text`` that are judged (see the module docstring)."""
    found = []
    for match in QUOTE.finditer(text):
        span = next(group for group in match.groups() if group is not None).strip()
        if span.endswith("\\"):  # a JSON string's escaped quote ("13\" Wall Clock"), not a closing one
            continue
        if span and not (len(span) <= short and span.isascii() and span.isalnum()):
            found.append(span)
    return found


def grounded(span: str, earlier: str) -> bool:
    """Whether the normalised ``span`` is in ``earlier``: as a whole, or every word of it (a
    quote that joins words the user or a tool wrote apart: the pair "àbac xinès")."""
    return span in earlier or (" " in span and all(word in earlier for word in span.split()))


def _said(message: Message) -> str:
    return " ".join([message.content, *(call.arguments_json() for call in message.tool_calls)])


def judged_answers(sample: Sample) -> list[int]:
    """Indexes of the replies that are judged: supervised assistant messages without a call right
    after a ``tool`` message."""
    messages = sample.messages
    return [
        index
        for index, message in enumerate(messages)
        if index > 0
        and message.role is Role.ASSISTANT
        and message.loss
        and messages[index - 1].role is Role.TOOL
        and not is_call(message)
    ]


def misquoted_replies(sample: Sample, short: int = 4, answers: list[int] | None = None) -> dict[int, list[str]]:
    """Message index -> the quotes no earlier message holds, for every judged reply with one.
    ``answers``: the sample's :func:`judged_answers`, when the caller has them already."""
    found: dict[int, list[str]] = {}
    messages = sample.messages
    for index in judged_answers(sample) if answers is None else answers:
        spans = quotes(reply_text(messages[index]), short)
        if not spans:
            continue
        earlier = normalise(" ".join(_said(m) for m in messages[:index]))
        invented = [span for span in spans if not grounded(normalise(span), earlier)]
        if invented:
            found[index] = invented
    return found


__all__ = ["grounded", "judged_answers", "misquoted_replies", "normalise", "quotes", "reply_text"]
