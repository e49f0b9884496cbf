"""agentmill records: the single source of truth for every record and for the shard schema.

Pure pydantic v2 and pyarrow; nothing here imports Beam.
"""

from schemas.arrow import ArrowCodec, JsonField, arrow_schema
from schemas.audit import AuditExample, AuditPolicy, AuditReport, CheckPolicy, CheckResult, EvalSetSpec
from schemas.ids import canonical_json, content_hash, stable_id
from schemas.manifest import InputFile, Manifest, OutputInfo, ShardInfo, StepLedger
from schemas.rejected import Rejected, clip
from schemas.sample import (
    Capability,
    Lineage,
    Message,
    MessagePart,
    Sample,
    SampleKind,
    TokenCounts,
    count_tokens,
    message_text,
)
from schemas.spec import PipelineSpec, StepSpec
from schemas.tools import ToolCall, ToolSpec, parse_tool_list
from schemas.trajectory import Role, Trajectory, Turn, trajectory_id

__all__ = [
    "ArrowCodec",
    "AuditExample",
    "AuditPolicy",
    "AuditReport",
    "Capability",
    "CheckPolicy",
    "CheckResult",
    "EvalSetSpec",
    "InputFile",
    "JsonField",
    "Lineage",
    "Manifest",
    "Message",
    "MessagePart",
    "OutputInfo",
    "PipelineSpec",
    "Rejected",
    "Role",
    "Sample",
    "SampleKind",
    "ShardInfo",
    "StepLedger",
    "StepSpec",
    "TokenCounts",
    "ToolCall",
    "ToolSpec",
    "Trajectory",
    "Turn",
    "arrow_schema",
    "canonical_json",
    "clip",
    "content_hash",
    "count_tokens",
    "message_text",
    "parse_tool_list",
    "stable_id",
    "trajectory_id",
]
