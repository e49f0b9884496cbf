"""Building a Sample from a Trajectory: the one place ids, lineage, counts and metadata are set."""

from __future__ import annotations

from typing import Any

from schemas import (
    Lineage,
    Message,
    MessagePart,
    Sample,
    SampleKind,
    ToolSpec,
    Trajectory,
    Turn,
    count_tokens,
    stable_id,
)
from transforms.base import StepContext


def message_of(turn: Turn, part: MessagePart | None = None) -> Message:
    """``turn`` as a message, text, loss flag, calls and call link untouched."""
    return Message(
        role=turn.role,
        content=turn.text,
        loss=turn.loss,
        tool_calls=turn.tool_calls,
        tool_call_id=turn.tool_call_id,
        name=turn.name,
        part=part,
    )


def source_metadata(trajectory: Trajectory) -> dict[str, Any]:
    """The trajectory's metadata plus its reward and success, when it has them."""
    metadata = dict(trajectory.metadata)
    if trajectory.reward is not None:
        metadata["reward"] = trajectory.reward
    if trajectory.success is not None:
        metadata["success"] = trajectory.success
    return metadata


def sample_of(
    trajectory: Trajectory,
    messages: list[Message],
    *,
    kind: SampleKind,
    derivation: str,
    context: StepContext,
    tools: list[ToolSpec] | None = None,
    metadata: dict[str, Any] | None = None,
    id_key: str = "",
) -> Sample:
    """A sample made from ``trajectory`` by the step of ``context``.

    Guarantees: the id is ``stable_id(source, source id, derivation, trajectory id)`` (with
    ``:id_key`` after the derivation when one trajectory gives several samples of a derivation),
    so each derivation of a trajectory has its own stable id; the lineage names the source, the
    trajectory, the task, the derivation and this step; counts are computed from ``messages``.
    ``tools`` defaults to the trajectory's, ``metadata`` to :func:`source_metadata`.
    """
    return Sample(
        id=stable_id(
            trajectory.source, trajectory.source_id, f"{derivation}:{id_key}" if id_key else derivation, trajectory.id
        ),
        kind=kind,
        messages=messages,
        tools=trajectory.tools if tools is None else tools,
        lineage=Lineage(
            source=trajectory.source,
            source_id=trajectory.source_id,
            trajectory_id=trajectory.id,
            task=trajectory.task,
            derivation=derivation,
            steps=[context.step_id],
            config_hash=context.config_hash,
        ),
        counts=count_tokens(messages),
        metadata=source_metadata(trajectory) if metadata is None else metadata,
    )
