"""``identity_claim``: supervised text that claims another model's identity or maker."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import Role, Sample
from transforms.quality.check import SampleCheck, Verdict
from transforms.quality.identity import IdentityPatterns, identity_patterns


class IdentityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patterns: dict[str, str] = Field(default_factory=dict)
    replace: bool = False

    @model_validator(mode="after")
    def _compiles(self) -> IdentityOptions:
        identity_patterns(self.patterns, self.replace)  # a pattern that does not compile is named
        return self


class IdentityClaim(SampleCheck):
    name = "identity_claim"
    definition = (
        "Share of samples with a supervised assistant message that matches an identity pattern "
        "(templates/quality/identity.yaml): 'I am Vicuna', 'trained by OpenAI', ..."
    )
    threshold = 0.0
    severity = "block"
    Options = IdentityOptions

    def setup(self) -> None:
        if not hasattr(self, "_patterns"):
            options: IdentityOptions = self.options  # type: ignore[assignment]
            self._patterns: IdentityPatterns = identity_patterns(options.patterns, options.replace)

    def inspect(self, sample: Sample) -> Verdict:
        self.setup()
        for message in sample.messages:
            if message.role is Role.ASSISTANT and message.loss:
                found = self._patterns.first_match(message.content)
                if found:
                    return Verdict(True, found[1], found[0])
        return Verdict(False)
