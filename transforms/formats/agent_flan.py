"""Agent-FLAN release: ``{id, conversation: [{role, content, loss}]}``.

One released split marks turns with ``type`` instead of ``loss``: such turns get the default
loss of their role, and the per-turn types are kept in ``metadata["turn_types"]``.
"""

from __future__ import annotations

from typing import Any

from schemas import Trajectory
from transforms.formats.common import FieldNames, ParseContext, build_trajectory, require_list, require_object
from transforms.formats.openai import parse_turns

FIELDS = FieldNames(id=("id",), task=("task",), reward=("reward",), success=("success",), tools=("tools",))
MESSAGE_KEYS = ("conversation", "conversations")


def parse(obj: Any, ctx: ParseContext) -> Trajectory:
    record = require_object(obj)
    key, messages = require_list(record, MESSAGE_KEYS, "conversation", ctx.messages_path)
    trajectory = build_trajectory(record, parse_turns(messages, ctx), ctx, {key})
    types = [m.get("type") if isinstance(m, dict) else None for m in messages]
    if any(t is not None for t in types):
        trajectory.metadata["turn_types"] = types
    return trajectory
