"""A plan's inputs, checked before anything runs: every step's own checks, then its input files.

This is what ``agentmill validate`` runs after planning, and what a run records in its
manifest (with fingerprints). It imports no Beam (local patterns are matched without it; see
:mod:`transforms.files`), so validating a spec does not pay for Beam's import.
"""

from __future__ import annotations

from pipelines.errors import SpecError
from pipelines.graph import Plan
from schemas import InputFile
from transforms.files import InputError, eval_files, fingerprint


def collect_inputs(plan: Plan, files: bool = True, fingerprints: bool = True) -> list[InputFile]:
    """Run every step's own checks (templates, tokenizers, model directories), then resolve its
    input files (``files``) and fingerprint them (``fingerprints``; otherwise size and hash are
    left empty). Every problem is a :class:`SpecError` naming the step."""
    inputs = []
    for planned in plan.steps:
        step = planned.instantiate(plan.spec.seed, plan.base_dir)
        try:
            step.check()
        except ValueError as exc:
            raise SpecError(plan.path, str(exc), step_id=planned.id) from None
        files_of = getattr(step, "input_files", None)
        if files_of is None or not files:
            continue
        try:
            paths = files_of()
        except InputError as exc:
            raise SpecError(plan.path, str(exc), step_id=planned.id) from None
        inputs.extend(_input_files(planned.id, paths, fingerprints))
    if files and plan.spec.audit.enabled and plan.spec.audit.eval_sets:
        try:
            paths = eval_files(plan.spec.audit.eval_sets, plan.base_dir)
        except InputError as exc:
            raise SpecError(plan.path, f"audit eval_sets: {exc}") from None
        inputs.extend(_input_files("audit", paths, fingerprints))
    return inputs


def _input_files(step_id: str, paths: list[str], fingerprints: bool) -> list[InputFile]:
    inputs = []
    for path in paths:
        if fingerprints:
            fp = fingerprint(path)
            inputs.append(InputFile(step=step_id, path=fp.path, bytes=fp.bytes, sha256=fp.sha256))
        else:
            inputs.append(InputFile(step=step_id, path=path, bytes=0, sha256=""))
    return inputs
