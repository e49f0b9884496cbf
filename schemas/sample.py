"""``Sample``: one training conversation, the record the shards hold."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.arrow import JsonField
from schemas.tools import ToolCall, ToolSpec
from schemas.trajectory import Role

SampleKind = Literal["agent", "general", "negative", "instruction"]

#: What a message is within an agent step, set by the step that wrote it: ``thought``,
#: ``tool`` (the tool choice), ``arguments``, ``answer`` (a final answer), ``prose`` (other plain
#: assistant text), ``react`` (a whole step kept in its ReAct/JSON format), ``elicit`` (a short
#: user turn that asks for the next part). ``None`` when no step has said.
MessagePart = Literal["thought", "tool", "arguments", "answer", "prose", "react", "elicit"]


#: Parts whose content states their calls in text (so the calls are not counted twice).
CALL_IN_TEXT_PARTS = frozenset({"arguments", "react"})


class Capability(str, Enum):
    """Agent-FLAN's capability decomposition of assistant turns, plus general chat."""

    REASONING = "reasoning"
    RETRIEVAL = "retrieval"
    UNDERSTANDING = "understanding"
    INSTRUCTION_FOLLOWING = "instruction_following"
    GENERAL = "general"


class Message(BaseModel):
    """One chat message. Only messages with ``loss=True`` are supervised in training.

    ``tool_calls``: the structured calls of an assistant message, in order (parallel calls stay
    in one message). On native calls (readers, ``to_chat``) ``content`` is the prose beside them
    (often empty), not the calls' serialisation; only messages whose part says the text spells
    the call (:data:`CALL_IN_TEXT_PARTS`: align's ``arguments``, kept-format ``react``) carry a
    call that their content also states. ``tool_call_id`` / ``name``: on a ``tool`` message, the
    id of the call it answers and the tool's name (``None`` when the source does not link them).
    """

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str
    loss: bool = False
    capability: Capability | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    part: MessagePart | None = None


class Lineage(BaseModel):
    """Where a sample came from and which steps made it."""

    model_config = ConfigDict(extra="forbid")

    source: str
    source_id: str
    trajectory_id: str | None = None
    task: str | None = None
    derivation: str = ""
    steps: list[str] = Field(default_factory=list)
    config_hash: str = ""


class TokenCounts(BaseModel):
    """Token counts; the default counter splits on whitespace (see :func:`count_tokens`)."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = 0
    supervised_tokens: int = 0


class Sample(BaseModel):
    """A training conversation with per-message loss flags, tools, kind, lineage and counts."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: SampleKind
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    lineage: Lineage
    counts: TokenCounts = Field(default_factory=TokenCounts)
    metadata: JsonField = Field(default_factory=dict)


def whitespace_tokens(text: str) -> int:
    """The default token counter: the number of whitespace-separated words."""
    return len(text.split())


def message_text(message: Message) -> str:
    """The message's content followed by its native calls as ``name {json arguments}`` lines:
    the text that token counts see (calls a part spells in its content are not repeated)."""
    if not message.tool_calls or message.part in CALL_IN_TEXT_PARTS:
        return message.content
    calls = "\n".join(f"{c.name} {c.arguments_json()}" for c in message.tool_calls)
    return f"{message.content}\n{calls}" if message.content else calls


def count_tokens(messages: list[Message], counter=whitespace_tokens) -> TokenCounts:
    """Total and supervised (``loss=True``) token counts of ``messages`` (calls included)."""
    total = supervised = 0
    for message in messages:
        n = counter(message_text(message))
        total += n
        if message.loss:
            supervised += n
    return TokenCounts(tokens=total, supervised_tokens=supervised)
