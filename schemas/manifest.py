"""``manifest.json``: what a run read, what each step did with every record, what it wrote."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.audit import AuditReport


class StepLedger(BaseModel):
    """Per-step accounting. Invariant: ``in == passed + sum(filtered) + sum(dead_letter)``.

    ``emitted`` counts records sent to the main output, which may differ from ``passed`` for
    steps that make several records from one (or one from several); ``ports`` counts records
    sent to extra outputs. ``stats`` holds integer sums a step reports.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: str = ""
    in_: int = Field(0, alias="in")
    passed: int = 0
    filtered: dict[str, int] = Field(default_factory=dict)
    dead_letter: dict[str, int] = Field(default_factory=dict)
    emitted: int = 0
    ports: dict[str, int] = Field(default_factory=dict)
    stats: dict[str, int] = Field(default_factory=dict)

    def balanced(self) -> bool:
        return self.in_ == self.passed + sum(self.filtered.values()) + sum(self.dead_letter.values())


class InputFile(BaseModel):
    """Fingerprint of one input file."""

    model_config = ConfigDict(extra="forbid")

    step: str
    path: str
    bytes: int
    sha256: str


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str
    rows: int
    bytes: int
    sha256: str


class OutputInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_rows: int
    shards: list[ShardInfo]
    tokens: int = 0
    supervised_tokens: int = 0
    by_kind: dict[str, int] = Field(default_factory=dict)


class Manifest(BaseModel):
    """The record of one run, written last: its presence marks a complete output directory."""

    model_config = ConfigDict(extra="forbid")

    agentmill_version: str
    name: str
    spec: dict[str, Any]
    spec_hash: str
    config_hashes: dict[str, str]
    inputs: list[InputFile]
    steps: dict[str, StepLedger]
    output: OutputInfo
    ratios: dict[str, Any] = Field(default_factory=dict)
    run: dict[str, Any] = Field(default_factory=dict)
    audit: AuditReport | None = None
    audits: dict[str, AuditReport] = Field(default_factory=dict)

    def dump_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)
