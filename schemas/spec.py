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

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, value: Any) -> Any:
        return {} if value is None else value


class PipelineSpec(BaseModel):
    """A whole pipeline: a name, a seed for every sampling decision, and the steps."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    steps: list[StepSpec] = Field(min_length=1)
    audit: AuditPolicy = Field(default_factory=AuditPolicy)
