"""Shards written before structured ``tool_calls`` (one ``tool_call`` per message) are refused
by the trainer with a message that says how to rebuild them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from schemas import Sample, arrow_schema
from train.data import OldShardError, refuse_old_shards

OLD_CALL = pa.struct([pa.field("name", pa.string()), pa.field("arguments", pa.string())])
OLD_MESSAGE = pa.struct(
    [
        pa.field("role", pa.string()),
        pa.field("content", pa.string()),
        pa.field("loss", pa.bool_()),
        pa.field("capability", pa.string()),
        pa.field("tool_call", OLD_CALL),
        pa.field("part", pa.string()),
    ]
)


def test_the_old_message_schema_is_refused_and_the_current_one_read():
    old = pa.schema([pa.field("id", pa.string()), pa.field("messages", pa.list_(OLD_MESSAGE))])
    with pytest.raises(OldShardError, match=r"older agentmill.*rebuild"):
        refuse_old_shards(old, "out/data")
    refuse_old_shards(arrow_schema(Sample), "out/data")  # no error
