"""The audit as a plain object: the enabled checks of a policy, their states, and the report.

:class:`Auditor` is what the ``audit`` step, the ``write`` step and ``agentmill audit`` share:
``new_state`` / ``observe`` / ``merge`` / ``finish`` over the checks of an
:class:`schemas.AuditPolicy`, then :func:`fill_excerpts` once the example samples are at hand.
Guarantee: the report depends only on the samples, not on their order or how they were split
into bundles, and a ``block`` check over its threshold is named in ``report.blocking``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from schemas import AuditExample, AuditPolicy, AuditReport, CheckResult, Sample
from transforms.quality.check import AuditEnv, Check, Finding
from transforms.quality.checks import CHECKS

#: Examples whose excerpt is still to be made: sample id -> [(check, example index, hint)].
Pending = dict[str, list[tuple[str, int, str]]]


class AuditConfigError(ValueError):
    """A policy that names an unknown check or gives a check invalid options."""


def _env(policy: AuditPolicy, base_dir: str, spill_dir: str | None) -> AuditEnv:
    return AuditEnv(base_dir=base_dir, eval_sets=tuple(policy.eval_sets), spill_dir=spill_dir)


class Auditor:
    """The checks a policy enables, with their thresholds and severities. With a ``spill_dir``
    (a local folder the run owns), checks that keep a row per sample write their states there
    instead of holding them in memory."""

    def __init__(self, policy: AuditPolicy | None = None, base_dir: str = ".", spill_dir: str | None = None) -> None:
        policy = policy or AuditPolicy()
        unknown = sorted(set(policy.checks) - set(CHECKS))
        if unknown:
            raise AuditConfigError(f"unknown audit check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
        names = {s.name for s in policy.eval_sets}
        if len(names) != len(policy.eval_sets):
            raise AuditConfigError("audit eval_sets need distinct names")
        env = _env(policy, base_dir, spill_dir)
        self.checks: dict[str, tuple[Check, float, str]] = {}
        for name, cls in CHECKS.items():
            rule = policy.checks.get(name)
            if rule is not None and not rule.enabled:
                continue
            try:
                check = cls(rule.options if rule else None, env)
            except ValidationError as exc:
                raise AuditConfigError(f"audit check {name!r}: invalid options: {exc.errors()[0]['msg']}") from None
            if not check.configured():
                continue
            threshold = rule.threshold if rule and rule.threshold is not None else cls.threshold
            severity = rule.severity if rule and rule.severity is not None else cls.severity
            self.checks[name] = (check, threshold, severity)

    def setup(self) -> None:
        for check, _, _ in self.checks.values():
            check.setup()

    def prefetch(self) -> None:
        for check, _, _ in self.checks.values():
            check.prefetch()

    def new_state(self) -> dict[str, Any]:
        return {"samples": 0, **{name: check.new_state() for name, (check, _, _) in self.checks.items()}}

    def observe(self, state: dict[str, Any], sample: Sample) -> dict[str, Any]:
        state["samples"] += 1
        for name, (check, _, _) in self.checks.items():
            check.observe(state[name], sample)
        return state

    def merge(self, state: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
        state["samples"] += other["samples"]
        for name, (check, _, _) in self.checks.items():
            state[name] = check.merge(state[name], other[name])
        return state

    def finish(self, state: dict[str, Any]) -> tuple[AuditReport, Pending]:
        """The report, and the examples whose excerpts :func:`fill_excerpts` still has to make."""
        results: dict[str, CheckResult] = {}
        pending: Pending = {}
        for name, (check, threshold, severity) in self.checks.items():
            finding: Finding = check.finish(state[name])
            over = finding.over if finding.over is not None else finding.share > threshold + 1e-12
            status = "pass" if not over else ("fail" if severity == "block" else "warn")
            examples = []
            for i, example in enumerate(finding.examples):
                examples.append(AuditExample(id=example.id, excerpt=example.excerpt))
                if example.hint is not None:
                    pending.setdefault(example.id, []).append((name, i, example.hint))
            results[name] = CheckResult(
                name=name,
                definition=check.definition,
                severity=severity,  # type: ignore[arg-type]
                threshold=threshold,
                count=finding.count,
                total=finding.total,
                share=round(finding.share, 6),
                status=status,
                examples=examples,
                details=finding.details,
            )
        blocking = [name for name, result in results.items() if result.status == "fail"]
        return AuditReport(samples=state["samples"], checks=results, blocking=blocking), pending

    def fill_excerpts(self, report: AuditReport, pending: Pending, samples: Iterable[Sample]) -> AuditReport:
        """Make the pending excerpts from the samples they name (others are ignored)."""
        for sample in samples:
            for name, index, hint in pending.get(sample.id, ()):
                check = self.checks[name][0]
                report.checks[name].examples[index].excerpt = check.excerpt(sample, hint)
        return report

    def audit(self, samples: Iterable[Sample], again: Iterable[Sample] | None = None) -> AuditReport:
        """Audit ``samples`` in one process; excerpts come from ``again`` (a second pass over
        the same samples) or, when it is ``None``, from a list kept of the samples themselves."""
        state = self.new_state()
        kept: list[Sample] | None = [] if again is None else None
        for sample in samples:
            self.observe(state, sample)
            if kept is not None:
                kept.append(sample)
        report, pending = self.finish(state)
        if pending:
            self.fill_excerpts(report, pending, kept if kept is not None else again or ())
        return report
