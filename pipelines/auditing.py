"""``agentmill audit PATH``: the data-quality audit of an output directory or of raw inputs.

PATH is an agentmill output (its shards), a directory that ``datasets.save_to_disk`` wrote, or
input files (a path or glob) in a format the readers understand (``--format``). Raw inputs are
read with the ``read`` step's parser and turned into samples as ``to_chat`` does (text
untouched, the source's loss flags kept). The audit runs in this process, in one pass plus a
second pass that only reads back the example samples.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import yaml

from pipelines.errors import OutputError, SpecError
from pipelines.publish import MANIFEST, is_agentmill_output
from schemas import ArrowCodec, AuditPolicy, AuditReport, Sample
from transforms.base import Failed, StepContext
from transforms.files import InputError
from transforms.quality.auditor import AuditConfigError, Auditor

CODEC = ArrowCodec(Sample)


def shard_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "data-*.arrow")))


def samples_of_shards(paths: list[str]) -> Iterator[Sample]:
    """Every sample of the Arrow stream shards at ``paths``, in order."""
    for path in paths:
        with pa.memory_map(path) as source:
            for batch in pa.ipc.open_stream(source):
                for row in batch.to_pylist():
                    yield CODEC.from_row(row)  # type: ignore[misc]


def samples_of_inputs(pattern: str, fmt: str, kind: str, failures: list[Failed]) -> Iterator[Sample]:
    """Samples from input files, read as the ``read`` step reads them; unreadable records are
    appended to ``failures`` (never silently skipped)."""
    from transforms.files import resolve_paths
    from transforms.read import ReadConfig, ReadFile
    from transforms.to_chat import ToChatConfig, to_chat

    config = ReadConfig(format=fmt, paths=[pattern], source=os.path.basename(pattern.rstrip("/")) or "input")
    paths = resolve_paths(config.paths, os.getcwd())
    read = ReadFile(config, config.source or "input")
    chat = ToChatConfig(kind=kind, require_supervised=False)  # type: ignore[arg-type]
    context = StepContext(step_id="audit")
    for path in paths:
        for record in read(path):
            if isinstance(record, Failed):
                failures.append(record)
                continue
            sample = to_chat(record, chat, context)
            if isinstance(sample, Sample):
                yield sample


def load_policy(path: str | None, manifest: dict[str, Any] | None) -> tuple[AuditPolicy, str]:
    """The policy and the folder its relative paths start at: ``--policy`` (a spec with an
    ``audit:`` block, or the block itself), else the output's own spec without its evaluation
    sets (their paths were relative to a spec file that is not at hand), else the defaults."""
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(path, f"cannot read policy: {exc}") from None
        block = data.get("audit", data) if isinstance(data, dict) else data
        try:
            return AuditPolicy.model_validate(block or {}), os.path.dirname(os.path.abspath(path))
        except ValueError as exc:
            raise SpecError(path, f"invalid audit policy: {exc}") from None
    if manifest is not None:
        policy = AuditPolicy.model_validate(manifest.get("spec", {}).get("audit") or {})
        return policy.model_copy(update={"eval_sets": []}), "."
    return AuditPolicy(), "."


def audit_path(
    path: str, fmt: str | None = None, kind: str = "agent", policy_path: str | None = None
) -> tuple[AuditReport, list[Failed]]:
    """Audit ``path`` (see the module docstring); return the report and the unreadable records."""
    manifest = None
    failures: list[Failed] = []
    source: Callable[[list[Failed]], Iterator[Sample]]
    if os.path.isdir(path) and shard_files(path):
        if is_agentmill_output(path):
            with open(os.path.join(path, MANIFEST), encoding="utf-8") as handle:
                manifest = json.load(handle)
        shards = shard_files(path)

        def source(_: list[Failed]) -> Iterator[Sample]:
            return samples_of_shards(shards)

    elif fmt:

        def source(found: list[Failed]) -> Iterator[Sample]:
            return samples_of_inputs(path, fmt, kind, found)

    else:
        raise OutputError(
            f"{path!r} is not an output directory with shards; to audit input files give --format "
            "(agentinstruct, agent_flan, sharegpt, openai)"
        )
    policy, base_dir = load_policy(policy_path, manifest)
    # The checks that keep a row per sample write them to a temporary folder: flat memory.
    with tempfile.TemporaryDirectory(prefix="agentmill-audit-") as state_dir:
        try:
            auditor = Auditor(policy, base_dir, state_dir)
        except AuditConfigError as exc:
            raise SpecError(policy_path or path, str(exc)) from None
        try:
            auditor.setup()
            report = auditor.audit(source(failures), again=_second_pass(source))
        except InputError as exc:
            raise OutputError(f"cannot audit {path!r}: {exc}") from None
    return report, failures


def _second_pass(source: Callable[[list[Failed]], Iterator[Sample]]) -> Iterator[Sample]:
    """The samples again, read lazily only once the first pass has finished."""
    yield from source([])


def report_json(report: AuditReport) -> str:
    """One JSON object keyed by check name (count, total, share, threshold, severity, status,
    examples, details), plus ``_samples``."""
    body: dict[str, Any] = {"_samples": report.samples}
    for name, result in report.checks.items():
        body[name] = result.model_dump(mode="json", exclude={"name"})
    return json.dumps(body, ensure_ascii=False, indent=2)
