"""``misquoted_result``: answers that quote what their tool never returned."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas import Sample
from transforms.quality.check import SampleCheck, Verdict
from transforms.quality.quotes import judged_answers, misquoted_replies


class MisquotedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Quotes of at most this many ASCII letters and digits are not judged ("none", "QCOM").
    short: int = Field(4, ge=0)


class MisquotedResult(SampleCheck):
    """Judged are the samples with a supervised answer right after a tool result (the others do
    not count); the definition of a misquote is :mod:`transforms.quality.quotes`, the one
    ``clean_outputs``' ``misquoted_result`` rule takes out of the loss."""

    name = "misquoted_result"
    definition = (
        "Share of samples with a supervised answer right after a tool result whose quotation "
        '("...", “...”, 《...》, 「...」) no earlier message holds, over the samples with such an answer.'
    )
    threshold = 0.0
    severity = "warn"
    Options = MisquotedOptions

    def inspect(self, sample: Sample) -> Verdict | None:
        answers = judged_answers(sample)
        if not answers:
            return None
        found = misquoted_replies(sample, self.options.short, answers)  # type: ignore[attr-defined]
        if not found:
            return Verdict(False)
        index, spans = next(iter(found.items()))
        quoted = ", ".join(f"“{span}”" for span in spans[:3])
        return Verdict(True, f"message {index} quotes {quoted}, which no earlier message holds", "misquoted")
