"""The step contract every transform keeps, built-in or user-written.

A step is a :class:`Step` subclass with a pydantic config, a declared input and output record
type, an ``expand`` written in Beam, and the guarantee that every input record ends in exactly
one place: an output, a filtered record with a reason, or a dead letter with the error. Steps
report that accounting as a ledger PCollection, aggregated per bundle, so counting costs a dict
update per record.

Most steps are :class:`RecordStep`: business logic is a plain, picklable callable on one record
(unit-testable without Beam); the base class turns it into a ParDo with the ledger and the
rejected-record outputs wired in.

This module does not import Beam, and neither does a step module at import time: a spec is
loaded, checked and planned (``agentmill validate``) without Beam's import, which costs more
than the rest of validation. The Beam side, the DoFns that run processors and sources and the
``PTransform`` that applies a step (:meth:`Step.ptransform`), is in :mod:`transforms.beam.records`;
a step's ``expand`` imports Beam where it runs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import apache_beam as beam

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


class Step:
    """Base of every step.

    Subclasses set ``type_name`` (the name used in specs), ``config_model``, ``input_type``
    (``None`` for a source) and ``output_type``, and may declare ``extra_outputs`` (port name to
    record type). ``expand`` is Beam code, like a ``PTransform``'s: it gets the input
    PCollection (the pipeline's ``PBegin`` for a source; a dict of PCollections for a
    ``fan_in = "named"`` step) and returns a dict with ``MAIN``, each extra port, ``REJECTED``
    (pairs of step id and JSON text of :class:`schemas.Rejected`) and ``LEDGER`` (pairs of
    ``(step, category, reason)`` and a count).

    A step is not itself a ``PTransform``, so that declaring, configuring and checking one needs
    no Beam: :meth:`ptransform` is the ``PTransform`` that applies it (labelled with the step
    id), as the runner does; ``pcoll | step.ptransform()`` applies it in any Beam pipeline.
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
        if not isinstance(config, self.config_model):
            config = self.config_model.model_validate(config or {})
        self.config = config
        self.context = context

    @property
    def step_id(self) -> str:
        return self.context.step_id

    @property
    def label(self) -> str:
        """The Beam label the step is applied under: its id."""
        return self.context.step_id

    def expand(self, inputs: Any) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement expand")

    def ptransform(self) -> beam.PTransform:
        """This step as a Beam ``PTransform`` labelled with the step id."""
        from transforms.beam.records import StepTransform

        return StepTransform(self)

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
        import apache_beam as beam

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
        import apache_beam as beam

        from transforms.beam.records import RecordDoFn

        outputs = pcoll | "Process" >> beam.ParDo(
            RecordDoFn(self.processor(), self.step_id, ports=self.extra_outputs, output_type=self.output_type)
        ).with_outputs(REJECTED, LEDGER, *self.extra_outputs, main=MAIN)
        return self._typed(outputs)


def __getattr__(name: str) -> Any:
    """The Beam side of the contract, under its old names here (``from transforms.base import
    RecordDoFn``), imported on first use."""
    if name in ("RecordDoFn", "SourceDoFn", "_Accounting"):
        from transforms.beam import records

        return getattr(records, name.lstrip("_"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
