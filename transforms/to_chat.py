"""Step ``to_chat``: Trajectory -> Sample, without rewriting any text.

Guarantees: one message per turn, in order, with role, text, per-turn loss flag, structured
tool calls (with their ids) and the tool-result links (``tool_call_id``, ``name``) unchanged;
an optional system prompt is put first (or replaces the source's); the sample's kind, lineage
(source, source id, trajectory id, task, steps, config hash) and token counts are set; reward,
success and the source's metadata are kept in ``metadata``. A trajectory with no
supervised turn is filtered (``no_supervised_turn``) unless ``require_supervised`` is off.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from schemas import Message, Role, Sample, SampleKind, Trajectory
from transforms.base import Filtered, RecordStep, StepConfig, StepContext
from transforms.samples import message_of, sample_of


class ToChatConfig(StepConfig):
    kind: SampleKind = "agent"
    system_prompt: str | None = None
    replace_system: bool = True
    require_supervised: bool = True


def to_chat(trajectory: Trajectory, config: ToChatConfig, context: StepContext) -> Sample | Filtered:
    """The pure function behind the step."""
    turns = trajectory.turns
    messages: list[Message] = []
    if config.system_prompt is not None:
        messages.append(Message(role=Role.SYSTEM, content=config.system_prompt, loss=False))
        if config.replace_system and turns and turns[0].role is Role.SYSTEM:
            turns = turns[1:]
    messages += [message_of(t) for t in turns]
    if config.require_supervised and not any(m.loss for m in messages):
        return Filtered("no_supervised_turn", "no turn has loss=true")
    return sample_of(trajectory, messages, kind=config.kind, derivation="to_chat", context=context)


class ToChatFn:
    def __init__(self, config: ToChatConfig, context: StepContext) -> None:
        self.config = config
        self.context = context

    def __call__(self, trajectory: Trajectory) -> Iterator[Any]:
        yield to_chat(trajectory, self.config, self.context)


class ToChat(RecordStep):
    """Trajectory -> Sample, text untouched (see module docstring)."""

    type_name = "to_chat"
    config_model = ToChatConfig
    input_type = Trajectory
    output_type = Sample

    def processor(self) -> ToChatFn:
        return ToChatFn(self.config, self.context)
