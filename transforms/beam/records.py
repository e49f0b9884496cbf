"""Steps on Beam: the DoFns that run a step's processor or source with the ledger and the
rejected-record outputs wired in, and the ``PTransform`` that applies a step.

The step contract itself (:class:`transforms.base.Step`, the outcomes a processor yields) is
declared in :mod:`transforms.base` without Beam; this module is what a run adds.
"""

from __future__ import annotations

import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows
from pydantic import BaseModel, ValidationError

from schemas import Rejected, clip
from transforms import progress
from transforms.base import (
    DEAD_LETTER,
    EMITTED,
    FILTERED,
    IN,
    LEDGER,
    PASSED,
    PORT,
    REJECTED,
    STAT,
    STEP_CONTRACT,
    Failed,
    Filtered,
    RecordError,
    Routed,
    Stat,
    Step,
)

_IN_KEY, _PASSED_KEY, _EMITTED_KEY = (IN, ""), (PASSED, ""), (EMITTED, "")
#: What processors usually return: iterables that are certainly not a record, text or a dict.
_OUTCOME_SEQUENCES = frozenset({list, tuple, types.GeneratorType})


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


class Accounting:
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
        self.acct = Accounting(self.step_id)

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
        self.acct = Accounting(self.step_id)

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


class StepTransform(beam.PTransform):
    """Applies a :class:`transforms.base.Step` in a Beam pipeline: labelled with the step id,
    its ``expand`` is the step's."""

    def __init__(self, step: Step) -> None:
        super().__init__(label=step.step_id)
        self.step = step

    def expand(self, inputs):  # no annotation: Beam type-checks expand hints
        return self.step.expand(inputs)
