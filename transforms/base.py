"""The step contract every transform keeps, built-in or user-written.

A step is a ``beam.PTransform`` subclass with a pydantic config, a declared input and output
record type, and the guarantee that every input record ends in exactly one place: an output, a
filtered record with a reason, or a dead letter with the error. Steps report that accounting as
a ledger PCollection, aggregated per bundle, so counting costs a dict update per record.

Most steps are :class:`RecordStep`: business logic is a plain, picklable callable on one record
(unit-testable without Beam); the base class turns it into a ParDo with the ledger and the
rejected-record outputs wired in.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows
from pydantic import BaseModel, ConfigDict, ValidationError

from schemas import Rejected, clip
from transforms import progress

MAIN = "main"
REJECTED = "__rejected__"
LEDGER = "__ledger__"

IN = "in"
PASSED = "passed"
EMITTED = "emitted"
FILTERED = "filtered"
DEAD_LETTER = "dead_letter"
STAT = "stat"
PORT = "port"
#: Dead-letter reason of a record whose step broke the step contract (a bug in the step, not in
#: the record): the runner refuses a run that has any.
STEP_CONTRACT = "step_contract"

LedgerKey = tuple[str, str, str]  # (step id, category, reason or stat name)
_IN_KEY, _PASSED_KEY, _EMITTED_KEY = (IN, ""), (PASSED, ""), (EMITTED, "")
#: What processors usually return: iterables that are certainly not a record, text or a dict.
_OUTCOME_SEQUENCES = frozenset({list, tuple, types.GeneratorType})


def check_regexes(patterns: Iterable[str]) -> list[str]:
    """``patterns`` unchanged once each compiles; a ``ValueError`` naming the first that does not
    (for config validators, so a bad pattern is an error before the run, not in a worker)."""
    patterns = list(patterns)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    return patterns


class StepConfig(BaseModel):
    """Base of every step config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a step knows of the run: its id, the seed, where relative paths start, the output,
    and where it may spill records to disk (``None``: keep Beam's own materialization; see
    :mod:`transforms.spill`)."""

    step_id: str
    seed: int = 0
    base_dir: str = "."
    output_dir: str | None = None
    config_hash: str = ""
    spill_root: str | None = None

    def spill_dir(self, name: str = "") -> str | None:
        """This step's spill folder for one use (``name``), or ``None`` when spilling is off."""
        if self.spill_root is None:
            return None
        from apache_beam.io.filesystems import FileSystems

        parts = [self.spill_root, self.step_id, *([name] if name else [])]
        return FileSystems.join(*parts)


@dataclasses.dataclass(frozen=True)
class Filtered:
    """Yielded by a processor to drop its input deliberately, with a reason.

    With ``port`` set, the input record is also sent to that extra output (e.g. a pool of
    rejected trajectories for negative samples). ``keep_payload=False`` leaves the record's
    content out of its rejected entry (its id stays): for records a quota did not draw, which
    would otherwise copy most of a large input into ``rejected/``.
    """

    reason: str
    detail: str = ""
    port: str | None = None
    keep_payload: bool = True


@dataclasses.dataclass(frozen=True)
class Routed:
    """Yielded by a processor to send an output record to an extra port instead of ``main``."""

    port: str
    record: Any


@dataclasses.dataclass(frozen=True)
class Stat:
    """Yielded by a processor to add ``value`` to the step's integer statistic ``name``."""

    name: str
    value: int


@dataclasses.dataclass(frozen=True)
class Failed:
    """Yielded by a source for a record that could not be read (a dead letter)."""

    reason: str
    detail: str
    location: str | None = None
    payload: str = ""


class RecordError(Exception):
    """Raised by a processor for a record it cannot handle: the record becomes a dead letter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _unwrap(record: Any) -> Any:
    """The record inside a keyed element (e.g. ``(group, trajectory)``), else the element."""
    if isinstance(record, tuple) and record and isinstance(record[-1], BaseModel):
        return record[-1]
    return record


def _payload(record: Any) -> str:
    record = _unwrap(record)
    if isinstance(record, BaseModel):
        return clip(record.model_dump_json())
    return clip(str(record))


def _record_id(record: Any) -> str | None:
    value = getattr(_unwrap(record), "id", None)
    return value if isinstance(value, str) else None


class _Accounting:
    """Per-bundle ledger counts and rejected-record construction for one step."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id
        self.counts: Counter[tuple[str, str]] = Counter()

    def rejected(self, disposition: str, reason: str, detail: str, record: Any = None, **extra: Any) -> TaggedOutput:
        self.counts[(disposition, reason)] += 1
        entry = Rejected(
            step=self.step_id,
            disposition=disposition,
            reason=reason,
            detail=clip(detail, 2_000),
            record_id=extra.get("record_id", _record_id(record)),
            location=extra.get("location"),
            payload=extra.get("payload", _payload(record) if record is not None else ""),
        )
        return TaggedOutput(REJECTED, (self.step_id, entry.model_dump_json()))

    def flush(self) -> Iterator[Any]:
        progress.report(self.step_id, self.counts.get((IN, ""), 0))
        for (category, reason), n in sorted(self.counts.items()):
            yield TaggedOutput(LEDGER, GlobalWindows.windowed_value(((self.step_id, category, reason), n)))
        self.counts.clear()


class RecordDoFn(beam.DoFn):
    """Runs a processor on each record and routes its outcomes (see :class:`RecordStep`).

    ``ports`` are the extra outputs the step declares: a record the processor routes
    (:class:`Routed`, or :class:`Filtered` with a ``port``) anywhere else would vanish, as Beam
    drops outputs to undeclared tags, so its input becomes a dead letter ``undeclared_port``
    naming the step and the port instead. ``None`` leaves ports unchecked (a step that wires
    its own outputs).

    A processor that returns something other than an iterable of outcomes (a dict, a string, a
    record, ``None``), or that emits to the main output a record that is not an ``output_type``
    (when given), breaks the step contract: the input becomes a dead letter ``step_contract``
    naming the step and what it returned, and the runner refuses the run (see
    :data:`STEP_CONTRACT`)."""

    def __init__(
        self,
        processor: Callable[[Any], Iterable[Any]],
        step_id: str,
        ports: Iterable[str] | None = None,
        output_type: type | None = None,
    ) -> None:
        self.processor = processor
        self.step_id = step_id
        self.ports = None if ports is None else frozenset(ports)
        self.output_type = output_type if isinstance(output_type, type) else None

    def _contract(self, result: Any) -> str | None:
        """Why ``result`` (what the processor returned) breaks the step contract, or None."""
        if isinstance(result, (str, bytes, dict, BaseModel)) or not isinstance(result, Iterable):
            return (
                f"the processor returned a {type(result).__name__}, not an iterable of outcomes "
                "(yield each output record, Filtered, Routed or Stat)"
            )
        return None

    def setup(self) -> None:
        setup = getattr(self.processor, "setup", None)
        if callable(setup):
            setup()

    def start_bundle(self) -> None:
        self.acct = _Accounting(self.step_id)

    def process(self, record: Any, **side_inputs):  # no annotation: Beam type-checks process hints
        """The record's outputs as a list (Beam iterates it without resuming a generator)."""
        acct = self.acct
        acct.counts[_IN_KEY] += 1
        try:
            result = self.processor(record, **side_inputs)
            if type(result) not in _OUTCOME_SEQUENCES:  # the common kinds need no contract check
                broken = self._contract(result)
                if broken is not None:
                    return [acct.rejected(DEAD_LETTER, STEP_CONTRACT, broken, record)]
            outcomes = list(result)
        except RecordError as exc:
            return [acct.rejected(DEAD_LETTER, exc.reason, exc.detail, record)]
        except ValidationError as exc:
            return [acct.rejected(DEAD_LETTER, "invalid_output", str(exc), record)]
        except Exception as exc:  # a bug or an unexpected input: never lose the record
            return [acct.rejected(DEAD_LETTER, "unexpected_error", f"{type(exc).__name__}: {exc}", record)]
        output_type = self.output_type
        if output_type is not None and outcomes and type(outcomes[0]) is output_type:
            # The common cases, one record of the declared type alone or followed by statistics:
            # the checks of ``_route`` all pass.
            counts = acct.counts
            if len(outcomes) == 1:
                counts[_PASSED_KEY] += 1
                counts[_EMITTED_KEY] += 1
                return outcomes
            if all(type(o) is Stat for o in outcomes[1:]):
                for stat in outcomes[1:]:
                    counts[(STAT, stat.name)] += stat.value
                counts[_PASSED_KEY] += 1
                counts[_EMITTED_KEY] += 1
                return outcomes[:1]
        return self._route(record, outcomes)

    def _route(self, record: Any, outcomes: list[Any]) -> list[Any]:
        """Check and route a processor's outcomes (see the class docstring)."""
        acct = self.acct
        ports = self.ports
        outputs = []
        stats = []
        filtered = None
        undeclared = None  # the first port an outcome is routed to that the step does not declare
        for outcome in outcomes:
            if isinstance(outcome, Stat):
                stats.append(outcome)
                continue
            if isinstance(outcome, Filtered):
                filtered = outcome
            else:
                outputs.append(outcome)
            port = outcome.port if isinstance(outcome, (Routed, Filtered)) else None
            if undeclared is None and ports is not None and port is not None and port not in ports:
                undeclared = port
        if undeclared is not None:
            declared = ", ".join(sorted(ports or ())) or "none"
            detail = (
                f"step {self.step_id!r} routed a record to port {undeclared!r}, which it does not declare ({declared})"
            )
            return [acct.rejected(DEAD_LETTER, "undeclared_port", detail, record)]
        for stat in stats:
            acct.counts[(STAT, stat.name)] += stat.value
        output_type = self.output_type
        wrong = next((o for o in outputs if output_type and not isinstance(o, (Routed, output_type))), None)
        if wrong is not None:
            expected = getattr(output_type, "__name__", output_type)
            detail = f"the processor emitted a {type(wrong).__name__}, not a {expected}"
            return [acct.rejected(DEAD_LETTER, STEP_CONTRACT, detail, record)]
        if filtered is not None:
            if outputs:
                return [acct.rejected(DEAD_LETTER, STEP_CONTRACT, "processor both filtered and emitted", record)]
            omit = {} if filtered.keep_payload else {"payload": ""}
            routed = [acct.rejected(FILTERED, filtered.reason, filtered.detail, record, **omit)]
            if filtered.port:
                acct.counts[(PORT, filtered.port)] += 1
                routed.append(TaggedOutput(filtered.port, record))
            return routed
        if not outputs:
            return [acct.rejected(DEAD_LETTER, "no_output", "processor emitted nothing and gave no reason", record)]
        acct.counts[_PASSED_KEY] += 1
        routed = []
        for output in outputs:
            if isinstance(output, Routed):
                acct.counts[(PORT, output.port)] += 1
                routed.append(TaggedOutput(output.port, output.record))
            else:
                acct.counts[_EMITTED_KEY] += 1
                routed.append(output)
        return routed

    def finish_bundle(self) -> Iterator[Any]:
        yield from self.acct.flush()


class SourceDoFn(beam.DoFn):
    """Runs a source function on each input unit (e.g. a file); every outcome is one record."""

    def __init__(self, source: Callable[[Any], Iterable[Any]], step_id: str) -> None:
        self.source = source
        self.step_id = step_id

    def start_bundle(self) -> None:
        self.acct = _Accounting(self.step_id)

    def process(self, unit: Any) -> Iterator[Any]:
        acct = self.acct
        for outcome in self.source(unit):
            acct.counts[(IN, "")] += 1
            if isinstance(outcome, Failed):
                yield acct.rejected(
                    DEAD_LETTER,
                    outcome.reason,
                    outcome.detail,
                    location=outcome.location,
                    payload=clip(outcome.payload),
                    record_id=None,
                )
            elif isinstance(outcome, Filtered):
                yield acct.rejected(FILTERED, outcome.reason, outcome.detail)
            else:
                acct.counts[(PASSED, "")] += 1
                acct.counts[(EMITTED, "")] += 1
                yield outcome

    def finish_bundle(self) -> Iterator[Any]:
        yield from self.acct.flush()


class Step(beam.PTransform):
    """Base of every step.

    Subclasses set ``type_name`` (the name used in specs), ``config_model``, ``input_type``
    (``None`` for a source) and ``output_type``, and may declare ``extra_outputs`` (port name to
    record type). ``expand`` returns a dict with ``MAIN``, each extra port, ``REJECTED`` (pairs
    of step id and JSON text of :class:`schemas.Rejected`) and ``LEDGER`` (pairs of
    ``(step, category, reason)`` and a count).
    """

    type_name: ClassVar[str] = ""
    config_model: ClassVar[type[StepConfig]] = StepConfig
    input_type: ClassVar[type | None] = None
    output_type: ClassVar[type | None] = None
    extra_outputs: ClassVar[dict[str, type]] = {}
    #: "flatten": several inputs are merged into one PCollection; "named": the step receives a
    #: dict {input name: PCollection} (e.g. a mixing step that treats inputs differently).
    fan_in: ClassVar[str] = "flatten"

    def __init__(self, config: StepConfig | dict[str, Any] | None = None, context: StepContext | None = None) -> None:
        context = context or StepContext(step_id=self.type_name or type(self).__name__)
        super().__init__(label=context.step_id)
        if not isinstance(config, self.config_model):
            config = self.config_model.model_validate(config or {})
        self.config = config
        self.context = context

    @property
    def step_id(self) -> str:
        return self.context.step_id

    @classmethod
    def check_inputs(cls, config: StepConfig, input_names: list[str]) -> None:
        """For ``fan_in = "named"`` steps: check the spec's input names against the config
        before anything runs; raise ``ValueError`` with a message for the user."""

    def check(self) -> None:
        """Checks that need more than the config model (files, templates), run before the
        pipeline is built; raise ``ValueError`` with a message for the user."""

    @classmethod
    def prefetch(cls, config: StepConfig) -> None:
        """Start loading, with :func:`transforms.background.start`, what this step's workers
        will load in their set-up (a model, say). Called before the graph is built, and only
        when the workers run in this process or are forked from it; loading nothing is fine."""

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any] | None:
        """Optional summary for ``manifest.json["ratios"][step id]``, computed after the run
        from this step's :class:`schemas.StepLedger` (e.g. target vs achieved shares from the
        integer stats the step reported). ``None`` adds nothing."""
        return None

    def output_ports(self) -> dict[str, type | None]:
        return {MAIN: self.output_type, **self.extra_outputs}

    def _typed(self, outputs: Any) -> dict[str, Any]:
        """Dict of the step's outputs with element types set, so Beam picks the right coders."""
        result = {name: outputs[name] for name in (MAIN, REJECTED, LEDGER, *self.extra_outputs)}
        for name, record_type in self.output_ports().items():
            if record_type is not None:
                result[name].element_type = record_type
        result[REJECTED].element_type = beam.typehints.KV[str, str]
        return result


class RecordStep(Step):
    """A step that maps each input record to outcomes with a plain function.

    Subclasses implement :meth:`processor`, returning a picklable callable ``record -> iterable``
    whose items are output records, :class:`Routed`, :class:`Filtered` or :class:`Stat`; raising
    :class:`RecordError` dead-letters the record. Side inputs given to the ParDo as keyword
    arguments reach the processor as keyword arguments. A callable with a ``setup()`` method gets it
    called once per worker before use (load a model, compile templates).
    """

    def processor(self) -> Callable[[Any], Iterable[Any]]:
        raise NotImplementedError

    def expand(self, pcoll: beam.PCollection) -> dict[str, Any]:
        outputs = pcoll | "Process" >> beam.ParDo(
            RecordDoFn(self.processor(), self.step_id, ports=self.extra_outputs, output_type=self.output_type)
        ).with_outputs(REJECTED, LEDGER, *self.extra_outputs, main=MAIN)
        return self._typed(outputs)
