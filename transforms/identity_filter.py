"""Step ``identity_filter``: Sample -> Sample, samples that teach another model's identity removed.

A sample whose checked messages claim that the assistant is another model or was made by
another organisation ("I am Vicuna, trained by researchers from LMSYS") teaches a fine-tuned
model to say the same about itself. The claims are found by the shared, data-driven patterns of
:mod:`transforms.quality.identity` (``templates/quality/identity.yaml``); a config adds patterns
(``patterns``) or replaces the built-in ones (``replace: true``).

Guarantees:

- Checked messages are those whose role is in ``roles`` (default: assistant) and, with
  ``supervised_only`` (default), whose ``loss`` is true: what the model learns to produce.
  Unsupervised text (a user asking "Are you ChatGPT?", an in-context example) never counts.
- ``mode: drop`` (default): a sample with a claim in any checked message is filtered as
  ``identity_claim``; the detail names the first matching pattern, the message index and the
  matched text. Every other sample passes unchanged.
- ``mode: mask``: the claiming messages get ``loss: false`` (their text stays as context), the
  token counts are recomputed and the step is appended to ``lineage.steps``; the id is kept
  (the conversation is the same). A sample left with no supervised message is filtered as
  ``identity_claim`` like under ``drop``. The other messages and samples are unchanged.
- Stats: ``pattern:<name>`` counts the samples whose first claim matched pattern ``name`` (so
  the manifest shows the removed count by pattern), ``masked_messages`` the messages masked.
- The decision is a pure function of the sample and the config: no state, no randomness.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas import Role, Sample, count_tokens
from transforms.base import Filtered, RecordStep, Stat, StepConfig, StepContext
from transforms.quality.identity import IdentityPatterns, identity_patterns

REASON = "identity_claim"


class IdentityFilterConfig(StepConfig):
    """Config of ``identity_filter``."""

    patterns: dict[str, str] = Field(default_factory=dict)
    replace: bool = False
    roles: list[Role] = Field(default_factory=lambda: [Role.ASSISTANT], min_length=1)
    supervised_only: bool = True
    mode: Literal["drop", "mask"] = "drop"

    @field_validator("patterns")
    @classmethod
    def _named(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or ":" in name:
                raise ValueError(f"pattern names must be non-empty and without ':', got {name!r}")
        return value

    @model_validator(mode="after")
    def _compiles(self) -> IdentityFilterConfig:
        self.compiled()  # a pattern that does not compile is a config error, before anything runs
        return self

    def compiled(self) -> IdentityPatterns:
        """The patterns this config selects (``ValueError`` for one that does not compile)."""
        return identity_patterns(self.patterns, self.replace)


def claims(sample: Sample, config: IdentityFilterConfig, patterns: IdentityPatterns) -> list[tuple[int, str, str]]:
    """``(message index, pattern name, matched text)`` of every checked message with a claim."""
    found = []
    for index, message in enumerate(sample.messages):
        if message.role not in config.roles or (config.supervised_only and not message.loss):
            continue
        match = patterns.first_match(message.content)
        if match is not None:
            found.append((index, *match))
    return found


class IdentityFilterFn:
    """Picklable processor: finds the claims and drops or masks (see the module docstring)."""

    def __init__(self, config: IdentityFilterConfig, context: StepContext) -> None:
        self.config = config
        self.step_id = context.step_id
        self.patterns: IdentityPatterns | None = None

    def setup(self) -> None:
        self.patterns = self.config.compiled()

    def __call__(self, sample: Sample) -> Iterator[Any]:
        if self.patterns is None:
            self.setup()
        assert self.patterns is not None
        found = claims(sample, self.config, self.patterns)
        if not found:
            yield sample
            return
        index, name, text = found[0]
        yield Stat(f"pattern:{name}", 1)
        detail = f"pattern {name!r} in message {index}: {text!r}"
        if len(found) > 1:
            detail += f" (and {len(found) - 1} more message(s))"
        if self.config.mode == "drop":
            yield Filtered(REASON, detail)
            return
        masked = {i for i, _, _ in found}
        messages = [m.model_copy(update={"loss": False}) if i in masked else m for i, m in enumerate(sample.messages)]
        if not any(m.loss for m in messages):
            yield Filtered(REASON, detail + "; no supervised message left after masking")
            return
        yield Stat("masked_messages", len(masked))
        lineage = sample.lineage.model_copy(update={"steps": [*sample.lineage.steps, self.step_id]})
        yield sample.model_copy(update={"messages": messages, "counts": count_tokens(messages), "lineage": lineage})


class IdentityFilter(RecordStep):
    """Drops (or masks) supervised text that claims another model's identity or maker."""

    type_name = "identity_filter"
    config_model = IdentityFilterConfig
    input_type = Sample
    output_type = Sample

    def processor(self) -> IdentityFilterFn:
        return IdentityFilterFn(self.config, self.context)  # type: ignore[arg-type]

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        assert isinstance(config, IdentityFilterConfig)
        by_pattern = {k.split(":", 1)[1]: v for k, v in sorted(ledger.stats.items()) if k.startswith("pattern:")}
        return {
            "mode": config.mode,
            "in": ledger.in_,
            "with_claim": sum(by_pattern.values()),
            "dropped": ledger.filtered.get(REASON, 0),
            "masked_messages": ledger.stats.get("masked_messages", 0),
            "by_pattern": by_pattern,
        }


__all__ = ["IdentityFilter", "IdentityFilterConfig", "claims"]
