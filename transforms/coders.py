"""Beam coders for agentmill records: compact JSON through pydantic, deterministic, never pickle."""

from __future__ import annotations

from typing import Any, ClassVar

import apache_beam as beam
from pydantic import BaseModel

from schemas import Sample, Trajectory


class PydanticJsonCoder(beam.coders.Coder):
    """Encodes a pydantic record as its JSON text; decoding validates it again."""

    model: ClassVar[type[BaseModel]]

    def encode(self, value: BaseModel) -> bytes:
        return value.model_dump_json().encode("utf-8")

    def decode(self, encoded: bytes) -> BaseModel:
        return self.model.model_validate_json(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return self.model

    @classmethod
    def from_type_hint(cls, typehint: Any, registry: Any) -> PydanticJsonCoder:
        return cls()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class TrajectoryCoder(PydanticJsonCoder):
    model = Trajectory


class SampleCoder(PydanticJsonCoder):
    model = Sample


def register_coders() -> None:
    """Register the record coders with Beam's coder registry (idempotent)."""
    beam.coders.registry.register_coder(Trajectory, TrajectoryCoder)
    beam.coders.registry.register_coder(Sample, SampleCoder)


register_coders()
