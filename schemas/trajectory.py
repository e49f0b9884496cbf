"""``Trajectory``: a source-neutral agent episode. Every reader maps its format onto it."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from schemas.arrow import JsonField
from schemas.ids import content_hash, stable_id
from schemas.tools import ToolCall, ToolSpec


class Role(str, Enum):
    """Who speaks a turn. Environment observations are ``user`` or ``tool`` turns."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Turn(BaseModel):
    """One turn of an episode.

    ``loss`` is the per-turn supervision flag from the source (AgentInstruct's ``loss``); it is
    carried unchanged to the training labels. ``thought`` and ``observation`` are optional parsed
    views of ``text`` that readers or ``align`` may fill. ``tool_calls`` are the structured calls
    of an assistant turn, in order (several when the source made parallel calls in one turn);
    a ``tool`` turn that answers one of them names it in ``tool_call_id`` and the tool in ``name``.
    """

    model_config = ConfigDict(extra="forbid")

    role: Role
    text: str
    loss: bool = False
    thought: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    observation: str | None = None


class Trajectory(BaseModel):
    """An agent episode from any source.

    Guarantees: ``id`` is a stable content hash (see :func:`trajectory_id`); ``turns`` keep the
    source order; ``reward`` and ``success`` are ``None`` when the source has none.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    source_id: str
    task: str | None = None
    tools: list[ToolSpec] = Field(default_factory=list)
    turns: list[Turn]
    reward: float | None = None
    success: bool | None = None
    metadata: JsonField = Field(default_factory=dict)


def trajectory_id(source: str, source_id: str, turns: list[Turn]) -> str:
    """Stable id of a trajectory: hash of source, source id and the turns' role/text/loss, and
    the structured calls of the turns that have some (so ids of call-free turns are unchanged)."""
    digest = content_hash([_turn_key(t) for t in turns])
    return stable_id(source, source_id, "", digest)


def _turn_key(turn: Turn) -> list:
    key: list = [turn.role.value, turn.text, turn.loss]
    if turn.tool_calls:
        key.append([[c.name, c.arguments, c.id] for c in turn.tool_calls])
    return key
