"""The pipeline spec: what a YAML file under ``pipelines/`` holds."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.audit import AuditPolicy

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


class StepSpec(BaseModel):
    """One node of the DAG.

    ``type`` is a built-in step name (``read``, ``to_chat``, ``write``, ...) or a dotted path
    ``package.module:Class``. ``inputs`` name upstream step ids, optionally with an output port
    (``filter.rejected``); several inputs fan in, and one step may feed several others.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list)
    description: str = ""

    @field_validator("inputs", mode="before")
    @classmethod
    def _single_input(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("inputs")
    @classmethod
    def _distinct_inputs(cls, value: list[str]) -> list[str]:
        """An input named twice would feed every one of its records in twice."""
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:
            raise ValueError(f"input {', '.join(map(repr, twice))} is named more than once")
        return value

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, value: Any) -> Any:
        return {} if value is None else value


class PublishPolicy(BaseModel):
    """When a finished run may replace its output (the publish guard; docs/concepts.md).

    By default a run whose ``write`` step gets no rows, or in which any step turns more than
    ``max_dead_letter_share`` of the records it received into dead letters, is not published:
    the previous output stays and the run exits 1. ``allow_empty: true`` publishes an empty
    output; ``max_dead_letter_share: 1`` turns the share check off.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    allow_empty: bool = False
    max_dead_letter_share: float = Field(0.5, ge=0.0, le=1.0)


class PipelineSpec(BaseModel):
    """A whole pipeline: a name, a seed for every sampling decision, and the steps."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    steps: list[StepSpec] = Field(min_length=1)
    audit: AuditPolicy = Field(default_factory=AuditPolicy)
    publish: PublishPolicy = Field(default_factory=PublishPolicy)
