"""Source formats: each maps one record (a decoded JSON object or parquet row) to a Trajectory.

A parser is a pure function ``parse(obj, ctx) -> Trajectory`` that raises
:class:`transforms.base.RecordError` with a reason for a record it cannot map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas import Trajectory
from transforms.formats import agent_flan, agentinstruct, jsonl, openai, sharegpt
from transforms.formats.common import FieldNames, ParseContext

Parser = Callable[[Any, ParseContext], Trajectory]

PARSERS: dict[str, tuple[Parser, FieldNames]] = {
    "agentinstruct": (agentinstruct.parse, agentinstruct.FIELDS),
    "agent_flan": (agent_flan.parse, agent_flan.FIELDS),
    "sharegpt": (sharegpt.parse, sharegpt.FIELDS),
    "openai": (openai.parse, openai.FIELDS),
}

FORMATS = (*PARSERS, "jsonl")

__all__ = ["FORMATS", "PARSERS", "FieldNames", "ParseContext", "jsonl"]
