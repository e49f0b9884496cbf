"""``failed_episode``: agent samples whose episode records a failure."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas import Role, Sample
from transforms.base import check_regexes
from transforms.quality.check import SampleCheck, Verdict

DEFAULT_FAILURE_PATTERNS = [
    r"\breward\s*[=:]\s*(?:False|0(?:\.0+)?)\b",
    r"^\s*(?:Observation:\s*)?Task failed\b",
    r"\bEpisode (?:failed|finished without success)\b",
]


class FailedEpisodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: list[str] = Field(default_factory=lambda: ["agent"])
    failure_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_FAILURE_PATTERNS))
    #: Tasks (``lineage.task``) whose success flag is documented as meaningless in their source
    #: (AgentGym BabyAI: 0 on every episode, reward 0.99 included); their reward and final
    #: observation are still checked.
    ignore_success_flag: list[str] = Field(default_factory=list)

    @field_validator("failure_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return check_regexes(patterns)


class FailedEpisode(SampleCheck):
    name = "failed_episode"
    definition = (
        "Share of agent samples whose metadata records success = false or a reward that is false "
        "or <= 0, or whose final environment turn (the last user or tool message) matches a "
        "failure pattern ('reward = False', 'Task failed')."
    )
    threshold = 0.0
    severity = "block"
    Options = FailedEpisodeOptions

    def setup(self) -> None:
        if not hasattr(self, "_patterns"):
            options: FailedEpisodeOptions = self.options  # type: ignore[assignment]
            self._patterns = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in options.failure_patterns]
            self._kinds = set(options.kinds)

    def inspect(self, sample: Sample) -> Verdict | None:
        self.setup()
        if sample.kind not in self._kinds:
            return None
        metadata = sample.metadata if isinstance(sample.metadata, dict) else {}
        if metadata.get("success") is False and sample.lineage.task not in self.options.ignore_success_flag:  # type: ignore[attr-defined]
            return Verdict(True, "success = false", "success_false")
        reward = metadata.get("reward")
        if reward is False or (isinstance(reward, int | float) and not isinstance(reward, bool) and reward <= 0):
            return Verdict(True, f"reward = {reward}", "reward")
        last = next((m for m in reversed(sample.messages) if m.role in (Role.USER, Role.TOOL)), None)
        if last is not None and sample.messages and sample.messages[-1] is last:
            for pattern in self._patterns:
                found = pattern.search(last.content)
                if found:
                    return Verdict(
                        True, last.content[max(0, found.start() - 80) : found.end() + 80], "final_observation"
                    )
        return Verdict(False)
