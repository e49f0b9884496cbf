"""AgentInstruct / AgentTraj-L: ``{id, conversations: [{from: human|gpt, loss, value}]}``.

``loss`` is null for human turns, false for the in-context example and its acknowledgement,
true for the trajectory's own turns; it is kept exactly. The task comes from the id prefix
(``os_12`` -> ``os``) unless the record or the config names one.
"""

from __future__ import annotations

from typing import Any

from schemas import Trajectory
from transforms.formats.common import FieldNames, ParseContext, build_trajectory, require_list, require_object
from transforms.formats.sharegpt import parse_turns

FIELDS = FieldNames(id=("id", "item_id"), task=("task",), reward=("reward",), success=("success",), tools=("tools",))
MESSAGE_KEYS = ("conversations",)


def parse(obj: Any, ctx: ParseContext) -> Trajectory:
    record = require_object(obj)
    key, messages = require_list(record, MESSAGE_KEYS, "conversation", ctx.messages_path)
    return build_trajectory(record, parse_turns(messages, ctx), ctx, {key})
