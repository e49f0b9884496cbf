"""Step ``tag_capabilities``: every assistant message gets one Agent-FLAN capability.

The rules, all here (:func:`capability_of`), first match wins:

1. a non-assistant message gets none;
2. the sample's kind decides when it maps to one (default: ``general`` -> general,
   ``instruction`` -> instruction_following, ``negative`` -> general);
3. the message part written by ``align``: ``thought``, ``answer``, ``prose`` -> reasoning;
   ``tool`` -> retrieval; ``arguments`` -> understanding; ``react`` -> instruction_following;
4. an agent message without a part (e.g. from ``to_chat``): a ReAct-formatted text or a
   structured tool call -> instruction_following (format following), else reasoning.

Replace the rules with a custom step of the same types (``Sample -> Sample``) in the spec.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field, field_validator

from schemas import Capability, Message, Role, Sample, SampleKind
from transforms.base import RecordStep, Stat, StepConfig, StepContext
from transforms.react import has_markers

PART_CAPABILITY: dict[str, Capability] = {
    "thought": Capability.REASONING,
    "answer": Capability.REASONING,
    "prose": Capability.REASONING,
    "tool": Capability.RETRIEVAL,
    "arguments": Capability.UNDERSTANDING,
    "react": Capability.INSTRUCTION_FOLLOWING,
}


DEFAULT_BY_KIND: dict[str, Capability] = {
    "general": Capability.GENERAL,
    "instruction": Capability.INSTRUCTION_FOLLOWING,
    "negative": Capability.GENERAL,
}


class TagConfig(StepConfig):
    """``by_kind`` given in a spec is laid over the defaults; map a kind to ``null`` to tag its
    messages by part instead."""

    by_kind: dict[SampleKind, Capability | None] = Field(default_factory=lambda: dict(DEFAULT_BY_KIND))
    overwrite: bool = False

    @field_validator("by_kind", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        return {**DEFAULT_BY_KIND, **value} if isinstance(value, dict) else value


def capability_of(sample: Sample, message: Message, config: TagConfig) -> Capability | None:
    """The capability of one message (the rules of the module docstring)."""
    if message.role is not Role.ASSISTANT:
        return None
    if config.by_kind.get(sample.kind) is not None:
        return config.by_kind[sample.kind]
    if message.part in PART_CAPABILITY:
        return PART_CAPABILITY[message.part]
    if message.tool_calls or has_markers(message.content):
        return Capability.INSTRUCTION_FOLLOWING
    return Capability.REASONING


def tag(sample: Sample, config: TagConfig, context: StepContext) -> Sample:
    messages = [
        m
        if (m.capability is not None and not config.overwrite)
        else m.model_copy(update={"capability": capability_of(sample, m, config)})
        for m in sample.messages
    ]
    lineage = sample.lineage.model_copy(update={"steps": [*sample.lineage.steps, context.step_id]})
    return sample.model_copy(update={"messages": messages, "lineage": lineage})


class Tagger:
    def __init__(self, config: TagConfig, context: StepContext) -> None:
        self.config = config
        self.context = context

    def __call__(self, sample: Sample) -> Iterator[Any]:
        tagged = tag(sample, self.config, self.context)
        for message in tagged.messages:
            if message.capability is not None:
                yield Stat(f"turns:{message.capability.value}", 1)
        yield tagged


class TagCapabilities(RecordStep):
    """Tags every assistant message with its capability (see the module docstring)."""

    type_name = "tag_capabilities"
    config_model = TagConfig
    input_type = Sample
    output_type = Sample

    def processor(self) -> Tagger:
        return Tagger(self.config, self.context)
