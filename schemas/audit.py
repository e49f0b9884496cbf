"""The data-quality audit: the policy a spec sets (``audit:``) and the results a run records
(``manifest.json["audit"]``, ``agentmill audit --json``).

The checks themselves live in ``transforms/quality``; this module only fixes the shapes, so the
spec and the manifest can be validated without importing them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Severity = Literal["block", "warn"]
Status = Literal["pass", "warn", "fail"]
MAX_EXAMPLES = 5
EXCERPT_CHARS = 240


class CheckPolicy(BaseModel):
    """How one check is judged: ``None`` fields keep the check's defaults."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    threshold: float | None = Field(None, ge=0.0)
    severity: Severity | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class EvalSetSpec(BaseModel):
    """An evaluation set for ``eval_overlap``: files, the fields that hold its items' text, the
    field that names an item, and (``item_roles``) which messages of a ``{role, content}`` list
    count; read exactly as ``decontaminate`` reads its sets."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    paths: list[str] = Field(min_length=1)
    fields: list[str] = Field(
        default_factory=lambda: ["text", "prompt", "question", "turns", "instruction", "input", "content"], min_length=1
    )
    id_field: str | None = None
    item_roles: list[str] | None = None

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class AuditPolicy(BaseModel):
    """The ``audit:`` block of a spec. By default every check runs on what ``write`` publishes,
    with its own threshold and severity; a ``block`` check over its threshold fails the run
    before anything is published."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    checks: dict[str, CheckPolicy] = Field(default_factory=dict)
    eval_sets: list[EvalSetSpec] = Field(default_factory=list)


class AuditExample(BaseModel):
    """One sample that shows a finding: its id and a short excerpt of what was found."""

    model_config = ConfigDict(extra="forbid")

    id: str
    excerpt: str = ""


class CheckResult(BaseModel):
    """One check over a data set. ``share = count / total`` unless the check defines it
    otherwise (``decision_leak``: the normalised leak score); ``status`` compares ``share`` with
    ``threshold``: over it is ``fail`` for a ``block`` check and ``warn`` for a ``warn`` check."""

    model_config = ConfigDict(extra="forbid")

    name: str
    definition: str
    severity: Severity
    threshold: float
    count: int
    total: int
    share: float
    status: Status
    examples: list[AuditExample] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class AuditReport(BaseModel):
    """Every check's result over ``samples`` samples; ``blocking`` names the failed block checks."""

    model_config = ConfigDict(extra="forbid")

    samples: int
    checks: dict[str, CheckResult]
    blocking: list[str] = Field(default_factory=list)

    def summary_line(self) -> str:
        failed = [c for c in self.checks.values() if c.status != "pass"]
        if not failed:
            return f"audit: {len(self.checks)} checks pass on {self.samples} samples"
        parts = [f"{c.name} {c.share:.3f} > {c.threshold:g} ({c.status})" for c in failed]
        return f"audit of {self.samples} samples: " + "; ".join(parts)
