"""The audit's checks, by name. Each module holds one check (``tool_calls`` holds the two that
read calls); :data:`CHECKS` lists them in report order."""

from __future__ import annotations

from transforms.quality.check import Check
from transforms.quality.checks.decision_leak import DecisionLeak
from transforms.quality.checks.eval_overlap import EvalOverlap
from transforms.quality.checks.failed_episode import FailedEpisode
from transforms.quality.checks.format_contradiction import FormatContradiction
from transforms.quality.checks.identity_claim import IdentityClaim
from transforms.quality.checks.language_mismatch import LanguageMismatch
from transforms.quality.checks.misquoted_result import MisquotedResult
from transforms.quality.checks.near_duplicate import NearDuplicate
from transforms.quality.checks.prompt_copy import PromptCopy
from transforms.quality.checks.repeated_response import RepeatedResponse
from transforms.quality.checks.round_trip import RoundTrip
from transforms.quality.checks.tool_calls import ArgumentSchema, UndeclaredTool

CHECKS: dict[str, type[Check]] = {
    cls.name: cls
    for cls in (
        DecisionLeak,
        FormatContradiction,
        UndeclaredTool,
        ArgumentSchema,
        RoundTrip,
        RepeatedResponse,
        LanguageMismatch,
        IdentityClaim,
        FailedEpisode,
        MisquotedResult,
        PromptCopy,
        EvalOverlap,
        NearDuplicate,
    )
}

__all__ = ["CHECKS"]
