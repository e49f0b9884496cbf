"""Spec -> validated plan: the DAG checked before anything runs.

Checks, each reported with the spec file and the step id: YAML syntax and duplicate keys,
unknown keys, unknown step types, invalid step configs, unknown or missing inputs and ports,
cycles, type mismatches between connected steps, unconsumed outputs, and exactly one ``write``.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.errors import SpecError
from pipelines.registry import UnknownStepType, resolve_step_type
from pipelines.yaml_loader import safe_load
from schemas import AuditPolicy, PipelineSpec, StepSpec, content_hash
from schemas.rejected import clip
from schemas.spec import PublishPolicy
from transforms.base import MAIN, Step, StepConfig, StepContext
from transforms.quality.auditor import AuditConfigError, Auditor


@dataclass
class PlannedStep:
    spec: StepSpec
    cls: type[Step]
    config: StepConfig
    inputs: list[tuple[str, str]]  # (upstream step id, port)
    config_hash: str
    spec_path: str = ""

    @property
    def id(self) -> str:
        return self.spec.id

    def context(self, seed: int, base_dir: str, output_dir: str | None, spill_root: str | None = None) -> StepContext:
        return StepContext(
            step_id=self.id,
            seed=seed,
            base_dir=base_dir,
            output_dir=output_dir,
            config_hash=self.config_hash,
            spill_root=spill_root,
        )

    def instantiate(
        self, seed: int, base_dir: str, output_dir: str | None = None, spill_root: str | None = None
    ) -> Step:
        """The step object; an exception its class raises while being created (a custom step's
        ``__init__``) becomes a :class:`SpecError` naming the step and its type."""
        try:
            return self.cls(self.config, self.context(seed, base_dir, output_dir, spill_root))
        except Exception as exc:
            raise SpecError(
                self.spec_path or "<spec>",
                f"step type {self.spec.type!r} could not be created: {type(exc).__name__}: {exc}",
                step_id=self.id,
            ) from exc


@dataclass
class Plan:
    path: str
    base_dir: str
    spec: PipelineSpec
    steps: list[PlannedStep]  # topological order
    spec_hash: str
    by_id: dict[str, PlannedStep] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {s.id: s for s in self.steps}

    @property
    def sink(self) -> PlannedStep:
        return next(s for s in self.steps if s.spec.type == "write")


#: Errors listed in one message (the rest are counted), and the longest location or message shown.
MAX_ERRORS_SHOWN = 5
MAX_PART_CHARS = 200
#: Error types of strict validation that a quoted number or boolean gets.
_STRICT_TYPES = frozenset({"bool_type", "int_type", "float_type"})


def format_errors(errors: list[Any]) -> str:
    """One line from pydantic error dicts: unknown and missing keys named plainly; at most
    :data:`MAX_ERRORS_SHOWN` errors, each part clipped, and how many more there are."""
    parts = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        loc = clip(".".join(str(p) for p in error["loc"]), MAX_PART_CHARS)
        error = {**error, "msg": clip(str(error["msg"]), MAX_PART_CHARS)}
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif error["type"] == "missing":
            parts.append(f"missing key {loc!r}")
        else:
            message = error["msg"]
            if error["type"] in _STRICT_TYPES and isinstance(error.get("input"), str):
                message += f", not the text {clip(repr(error['input']), MAX_PART_CHARS)} (configs are strict)"
            parts.append(f"{loc}: {message}" if loc else message)
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more error(s)")
    return "; ".join(parts)


def format_validation_error(exc: ValidationError) -> str:
    return format_errors(exc.errors())


ModelT = TypeVar("ModelT", bound=BaseModel)


def _json_default(value: Any) -> str:
    """YAML values JSON has no type for (dates, timestamps, binary) are passed as their text."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"a value of type {type(value).__name__} cannot appear in a spec")


def validate_strict(model: type[ModelT], data: Any) -> ModelT:
    """``model`` validated from spec data as JSON, in pydantic's strict mode: a YAML value is
    taken for the type it has. ``"no"`` or ``"false"`` is not a bool, ``"3"`` or ``3.0`` not an int,
    ``"0.5"`` not a number, while what JSON can only spell as text (an enum value, a path, a date)
    and an integer for a float are accepted. The same spec gives the same model as lax validation
    whenever both accept it."""
    try:
        text = json.dumps(data, default=_json_default, ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # a value JSON cannot hold, or a circular reference
        raise ValidationError.from_exception_data(
            model.__name__, [{"type": "value_error", "loc": (), "input": None, "ctx": {"error": str(exc)}}]
        ) from None
    return model.model_validate_json(text, strict=True)


def load_spec(path: str) -> PipelineSpec:
    """Read and validate a spec file (structure only; :func:`plan_spec` checks the DAG)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SpecError(path, f"cannot read spec: {exc.strerror}") from None
    try:
        raw = safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(path, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise SpecError(path, "invalid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise SpecError(path, "a spec must be a mapping with 'name' and 'steps'")
    try:
        return validate_strict(PipelineSpec, raw)
    except ValidationError as exc:
        step_errors: dict[Any, list[str]] = {}
        for error in exc.errors():
            loc = error["loc"]
            if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
                steps = raw.get("steps") or []
                step = steps[loc[1]] if loc[1] < len(steps) and isinstance(steps[loc[1]], dict) else {}
                step_id = step.get("id")
                if not isinstance(step_id, str):  # a missing id, or a list or mapping given as one
                    step_id = f"#{loc[1] + 1}"
                step_errors.setdefault(step_id, []).append(format_errors([{**error, "loc": loc[2:]}]))
        if step_errors:
            step_id, messages = next(iter(step_errors.items()))
            raise SpecError(path, "; ".join(messages), step_id=str(step_id)) from None
        raise SpecError(path, format_validation_error(exc)) from None


def _parse_input(ref: str) -> tuple[str, str]:
    step_id, _, port = ref.partition(".")
    return step_id, port or MAIN


def _find_cycle(inputs_of: dict[str, list[str]]) -> list[str]:
    """One cycle among steps that cannot be ordered, as ``[a, b, ..., a]`` in data-flow order."""
    start = next(iter(inputs_of))
    path: list[str] = []
    node = start
    while node not in path:  # walk upstream: every unorderable step has an unorderable input
        path.append(node)
        node = next(i for i in inputs_of[node] if i in inputs_of)
    cycle = path[path.index(node) :]
    cycle.reverse()
    return [*cycle, cycle[0]]


def _topological(path: str, steps: list[PlannedStep]) -> list[PlannedStep]:
    order: list[PlannedStep] = []
    done: set[str] = set()
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if all(i in done for i, _ in s.inputs)]
        if not ready:
            cycle = _find_cycle({s.id: [i for i, _ in s.inputs] for s in remaining})
            raise SpecError(path, f"the steps form a cycle: {' -> '.join(cycle)}", step_id=cycle[0])
        for step in ready:
            order.append(step)
            done.add(step.id)
        remaining = [s for s in remaining if s.id not in done]
    return order


def _accepts(expected: type | None, given: type | None) -> bool:
    if expected is None or expected is Any:
        return True
    return given is not None and isinstance(given, type) and issubclass(given, expected)


def plan_spec(spec: PipelineSpec, path: str, base_dir: str) -> Plan:
    """Validate the DAG of ``spec`` and return its steps in topological order."""
    seen: set[str] = set()
    planned: list[PlannedStep] = []
    for step in spec.steps:
        if step.id in seen:
            raise SpecError(path, "duplicate step id", step_id=step.id)
        seen.add(step.id)
        try:
            cls = resolve_step_type(step.type)
        except UnknownStepType as exc:
            raise SpecError(path, str(exc), step_id=step.id) from None
        try:
            config = validate_strict(cls.config_model, step.config)
        except ValidationError as exc:
            raise SpecError(path, f"invalid config: {format_validation_error(exc)}", step_id=step.id) from None
        inputs = [_parse_input(ref) for ref in step.inputs]
        config_hash = content_hash({"type": step.type, "config": config.model_dump(mode="json")}, 16)
        planned.append(PlannedStep(step, cls, config, inputs, config_hash, spec_path=path))

    by_id = {s.id: s for s in planned}
    consumed: set[tuple[str, str]] = set()
    for step in planned:
        if step.cls.input_type is None and step.inputs:
            raise SpecError(path, f"a {step.spec.type!r} step reads no inputs, but 'inputs' is set", step_id=step.id)
        if step.cls.input_type is not None and not step.inputs:
            raise SpecError(path, "missing 'inputs': this step needs at least one upstream step", step_id=step.id)
        for upstream_id, port in step.inputs:
            upstream = by_id.get(upstream_id)
            if upstream is None:
                raise SpecError(path, f"input {upstream_id!r} is not a step of this spec", step_id=step.id)
            ports = {MAIN: upstream.cls.output_type, **upstream.cls.extra_outputs}
            if upstream.cls.output_type is None and port == MAIN:
                raise SpecError(path, f"input {upstream_id!r} is a sink and has no output", step_id=step.id)
            if port not in ports:
                raise SpecError(
                    path,
                    f"step {upstream_id!r} has no output port {port!r}; ports: {', '.join(ports)}",
                    step_id=step.id,
                )
            if not _accepts(step.cls.input_type, ports[port]):
                given = getattr(ports[port], "__name__", ports[port])
                raise SpecError(
                    path,
                    f"type mismatch: expects {step.cls.input_type.__name__} records but input "
                    f"{upstream_id + ('' if port == MAIN else '.' + port)!r} gives {given}",
                    step_id=step.id,
                )
            consumed.add((upstream_id, port))
        if step.cls.fan_in == "named":
            names = [i if p == MAIN else f"{i}.{p}" for i, p in step.inputs]
            try:
                step.cls.check_inputs(step.config, names)
            except ValueError as exc:
                raise SpecError(path, f"inputs: {exc}", step_id=step.id) from None

    order = _topological(path, planned)
    writes = [s for s in planned if s.spec.type == "write"]
    if len(writes) != 1:
        raise SpecError(path, f"a spec needs exactly one 'write' step, found {len(writes)}")
    for step in planned:
        if step.cls.output_type is not None and (step.id, MAIN) not in consumed:
            raise SpecError(path, "its output is not used by any step; connect it or remove it", step_id=step.id)
    try:
        Auditor(spec.audit, base_dir)
    except AuditConfigError as exc:
        raise SpecError(path, f"audit: {exc}") from None
    return Plan(path=path, base_dir=base_dir, spec=spec, steps=order, spec_hash=spec_hash(spec))


def spec_hash(spec: PipelineSpec) -> str:
    """Hash of the spec; ``audit:`` and ``publish:`` blocks left at their defaults are not part
    of it, so specs written before those blocks existed keep their hash."""
    dumped = spec.model_dump(mode="json")
    if spec.audit == AuditPolicy():
        dumped.pop("audit")
    if spec.publish == PublishPolicy():
        dumped.pop("publish")
    return content_hash(dumped, 16)


def load_plan(path: str) -> Plan:
    """Load, validate and plan the spec at ``path``; relative data paths start at its folder."""
    spec = load_spec(path)
    return plan_spec(spec, path, os.path.dirname(os.path.abspath(path)))


def mermaid(plan: Plan) -> str:
    """The DAG as Mermaid ``flowchart`` text."""
    lines = ["flowchart LR"]
    for step in plan.steps:
        lines.append(f'  {step.id}["{step.id}<br/><i>{step.spec.type}</i>"]')
    for step in plan.steps:
        for upstream, port in step.inputs:
            arrow = "-->" if port == MAIN else f"-->|{port}|"
            lines.append(f"  {upstream} {arrow} {step.id}")
    return "\n".join(lines) + "\n"
