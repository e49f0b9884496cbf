"""Step ``mix``: several Sample inputs -> one Sample stream with agent data at a share ``eta``.

AgentTuning's hybrid instruction tuning: agent samples make a share ``eta`` (default 0.2) of
the result, general samples the rest, measured in ``unit`` (samples, tokens or supervised
tokens, from ``Sample.counts``). Inputs named in ``agent`` are agent data; every other input is
general data. Inside an input, ``weights`` split that input's share between groups of a sample
field (e.g. ``metadata.model``: GPT-4 : GPT-3.5 = 1 : 4).

How sizes are chosen ("count, then select"):

1. Each input's capacity is its units, or, for a weighted input, the largest size that keeps
   the weights with no repeats (``min over groups of units / weight share``). A side's capacity
   is the sum over its inputs.
2. ``strategy: downsample`` (default) makes the output as large as possible without repeating
   anything; ``upsample`` makes it as small as possible without dropping anything;
   ``keep_agent`` keeps the agent side whole, each sample once, and sizes the general side to
   it (repeating general samples when the general pool is too small for ``eta``, dropping some
   when it is larger); a ``total`` fixes the output size. ``max_copies`` caps the copies of any
   one sample: when a strategy would need more, the output shrinks until it needs no more (the
   summary says ``capped``). The agent side gets ``eta`` of the size, the general side
   ``1 - eta``, split over inputs by capacity and inside an input by weight.
3. A group asked for ``T`` units out of ``U`` keeps every sample ``floor(T / U)`` times and then
   adds the prefix of its samples, in the keyed order of ``(seed, step id, sample id)``, whose
   units come nearest to the remainder. The first copy keeps its sample unchanged; further copies
   get a derived id (``stable_id``), ``+repeatN`` on the lineage derivation, this step in
   ``lineage.steps`` and ``metadata.repeat_of``.

A sample that is not selected is filtered as ``downsampled``; a sample of a weighted input whose
group has no weight is filtered as ``no_weight``. The manifest summary gives target and achieved
eta, and target and achieved shares of every input and group, in ``unit`` and also in samples,
tokens and supervised tokens (whatever ``unit`` is); per side and group the distinct samples
kept, their share of the available ones, and the repeats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import Sample, canonical_json, stable_id
from transforms.base import LEDGER, MAIN, REJECTED, Filtered, Stat, Step, StepConfig
from transforms.sampling import RankKey, prefix_threshold, rank_bytes, rank_from_bytes, rank_key

Unit = Literal["samples", "tokens", "supervised_tokens"]
AGENT, GENERAL = "agent", "general"
ALL_VALUES = "*"  # the group value of an unweighted input


class GroupWeights(BaseModel):
    """Weights of the groups of one input, by the value of a sample field (``by``)."""

    model_config = ConfigDict(extra="forbid")

    by: str
    shares: dict[str, float] = Field(min_length=1)
    other: float | None = Field(None, gt=0)

    @field_validator("by")
    @classmethod
    def _known_root(cls, value: str) -> str:
        root = value.split(".")[0]
        if root not in Sample.model_fields:
            raise ValueError(f"'by' must start with a Sample field ({', '.join(Sample.model_fields)}), got {value!r}")
        return value

    @field_validator("shares")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for key, weight in value.items():
            if not weight > 0:
                raise ValueError(f"share of {key!r} must be > 0, got {weight}")
        return value

    def weight_of(self, value: str | None) -> float | None:
        if value is not None and value in self.shares:
            return self.shares[value]
        return self.other


class MixConfig(StepConfig):
    """Config of ``mix``: ``agent`` names the inputs (``step`` or ``step.port``) of agent data."""

    agent: list[str] = Field(min_length=1)
    eta: float = Field(0.2, ge=0.0, le=1.0)
    unit: Unit = "samples"
    strategy: Literal["downsample", "upsample", "keep_agent"] = "downsample"
    total: float | None = Field(None, gt=0)
    max_copies: int | None = Field(None, ge=1)
    weights: dict[str, GroupWeights] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct(self) -> MixConfig:
        if len(set(self.agent)) != len(self.agent):
            raise ValueError("'agent' lists an input twice")
        if self.strategy == "keep_agent" and self.eta <= 0:
            raise ValueError("strategy 'keep_agent' needs eta > 0 (with eta 0 there is no agent side to keep)")
        return self

    def side_of(self, input_name: str) -> str:
        return AGENT if input_name in self.agent else GENERAL


def units_of(sample: Sample, unit: Unit) -> int:
    """The size of ``sample`` in ``unit``."""
    if unit == "samples":
        return 1
    if unit == "tokens":
        return sample.counts.tokens
    return sample.counts.supervised_tokens


def field_value(sample: Sample, path: str) -> str | None:
    """The value at a dotted ``path`` of ``sample`` as text (``None`` when absent)."""
    value: Any = sample
    for part in path.split("."):
        if isinstance(value, BaseModel):
            value = getattr(value, part, None)
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    if value is None:
        return None
    if hasattr(value, "value") and isinstance(value.value, str):  # enums
        return value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return canonical_json(value)


def group_of(sample: Sample, input_name: str, config: MixConfig) -> str | None:
    """The group value of ``sample`` in its input (``*`` for an unweighted input)."""
    weights = config.weights.get(input_name)
    return field_value(sample, weights.by) if weights else ALL_VALUES


def group_id(input_name: str, value: str | None) -> str:
    return canonical_json([input_name, value])


def parse_group_id(gid: str) -> tuple[str, str | None]:
    input_name, value = json.loads(gid)
    return input_name, value


@dataclass(frozen=True)
class GroupPlan:
    """What one group contributes: its side, weight share, available and target units."""

    input: str
    value: str | None
    side: str
    available: int
    share: float | None  # weight share inside its input; None: excluded (no weight)
    target: float
    max_copies: int | None = None


@dataclass(frozen=True)
class MixPlan:
    """Targets for every group, from the per-group available units."""

    groups: dict[str, GroupPlan]
    capacity: dict[str, float]  # side -> capacity
    target: dict[str, float]  # side -> target units
    input_capacity: dict[str, float]
    capped: bool = False  # max_copies made the output smaller than the strategy asked


def plan_mix(config: MixConfig, available: dict[str, int], input_names: Iterable[str]) -> MixPlan:
    """Targets per group (the pure function behind the sizes, see the module docstring).

    ``available`` maps group ids to the units they hold; ``input_names`` lists every input of
    the step (an input with no sample has capacity 0).
    """
    by_input: dict[str, dict[str | None, int]] = {name: {} for name in sorted(set(input_names))}
    for gid in sorted(available):
        name, value = parse_group_id(gid)
        by_input.setdefault(name, {})[value] = available[gid]

    shares: dict[tuple[str, str | None], float | None] = {}
    input_capacity: dict[str, float] = {}
    for name, groups in by_input.items():
        weights = config.weights.get(name)
        if weights is None:
            for value in groups:
                shares[(name, value)] = 1.0
            input_capacity[name] = float(sum(groups.values()))
            continue
        raw = {value: weights.weight_of(value) for value in groups}
        total_weight = sum(w for w in raw.values() if w is not None)
        capacity = math.inf if total_weight > 0 else 0.0
        for value in sorted(groups, key=lambda v: (v is None, v or "")):
            weight = raw[value]
            share = weight / total_weight if weight is not None and total_weight > 0 else None
            shares[(name, value)] = share
            if share is not None:
                capacity = min(capacity, groups[value] / share)
        input_capacity[name] = 0.0 if math.isinf(capacity) else capacity

    capacity = {AGENT: 0.0, GENERAL: 0.0}
    for name in by_input:
        capacity[config.side_of(name)] += input_capacity[name]
    share_of = {AGENT: config.eta, GENERAL: 1.0 - config.eta}
    if config.total is not None:
        size = config.total
    else:
        sides = [side for side in (AGENT, GENERAL) if share_of[side] > 0 and capacity[side] > 0]
        scales = [capacity[side] / share_of[side] for side in sides]
        if not scales:
            size = 0.0
        elif config.strategy == "downsample":
            starved = any(share_of[s] > 0 and capacity[s] == 0 for s in (AGENT, GENERAL))
            size = 0.0 if starved else min(scales)
        elif config.strategy == "keep_agent":
            size = capacity[AGENT] / share_of[AGENT] if capacity[AGENT] > 0 else 0.0
        else:
            size = max(scales)
    capped = False
    if config.max_copies is not None:
        # a side's samples are copied size * share / capacity times (the most any group needs)
        sides = [side for side in (AGENT, GENERAL) if share_of[side] > 0 and capacity[side] > 0]
        if sides:
            limit = config.max_copies * min(capacity[side] / share_of[side] for side in sides)
            if size > limit * (1 + 1e-12):
                size, capped = limit, True
    target = {side: size * share_of[side] if capacity[side] > 0 else 0.0 for side in (AGENT, GENERAL)}

    groups: dict[str, GroupPlan] = {}
    for name, members in by_input.items():
        side = config.side_of(name)
        input_target = target[side] * input_capacity[name] / capacity[side] if capacity[side] > 0 else 0.0
        for value, units in members.items():
            share = shares[(name, value)]
            groups[group_id(name, value)] = GroupPlan(
                input=name,
                value=value,
                side=side,
                available=units,
                share=share,
                target=input_target * share if share is not None else 0.0,
                max_copies=config.max_copies,
            )
    return MixPlan(groups=groups, capacity=capacity, target=target, input_capacity=input_capacity, capped=capped)


@dataclass(frozen=True)
class GroupDecision:
    """Every sample of the group is kept ``full`` times, plus once more if its rank key is
    ``<= threshold``."""

    full: int
    threshold: RankKey | None


def decide_group(plan: GroupPlan, ranked: Iterable[tuple[RankKey, int]], presorted: bool = False) -> GroupDecision:
    """Copies per sample of one group, from its target and its samples' ``(rank key, units)``
    (in rank order if ``presorted``). No sample gets more than ``plan.max_copies`` copies."""
    if plan.share is None or plan.target <= 0:
        return GroupDecision(0, None)
    full = 0
    remainder = plan.target
    if plan.available > 0 and plan.target >= plan.available:
        full = int(plan.target // plan.available)
        remainder = plan.target - full * plan.available
    if plan.max_copies is not None and full >= plan.max_copies:
        return GroupDecision(plan.max_copies, None)  # the plan's cap; a float hair over it is no extra copy
    threshold, _ = prefix_threshold(ranked, remainder, presorted)
    return GroupDecision(full, threshold)


def repeat_copy(sample: Sample, k: int, step_id: str) -> Sample:
    """The ``k``-th extra copy of ``sample`` (``k >= 1``): derived id and lineage."""
    lineage = sample.lineage.model_copy(
        update={
            "derivation": f"{sample.lineage.derivation}+repeat{k}",
            "steps": [*sample.lineage.steps, step_id],
        }
    )
    return sample.model_copy(
        update={
            "id": stable_id(sample.lineage.source, sample.lineage.source_id, f"{step_id}:repeat:{k}", sample.id),
            "lineage": lineage,
            "metadata": {**sample.metadata, "repeat_of": sample.id},
        }
    )


class MixFn:
    """Processor for one input: applies the group decisions (bound per element from side inputs)."""

    def __init__(self, input_name: str, config: MixConfig, seed: int, step_id: str) -> None:
        self.input_name = input_name
        self.config = config
        self.seed = seed
        self.step_id = step_id
        self.plan: MixPlan | None = None
        self.decisions: dict[str, GroupDecision] = {}

    def bind(self, plan: MixPlan, decisions: dict[str, GroupDecision]) -> None:
        self.plan = plan
        self.decisions = decisions

    def __call__(self, sample: Sample) -> Iterator[Any]:
        assert self.plan is not None, "MixFn used before its plan was bound"
        value = group_of(sample, self.input_name, self.config)
        gid = group_id(self.input_name, value)
        group = self.plan.groups[gid]
        units = units_of(sample, self.config.unit)
        label = canonical_json([self.input_name, value])
        yield Stat(f"in:{group.side}", units)
        yield Stat(f"in_group:{label}", units)
        yield Stat(f"in_samples_group:{label}", 1)
        if group.share is None:
            by = self.config.weights[self.input_name].by
            yield Filtered("no_weight", f"{by}={value!r} has no weight in input {self.input_name!r}")
            return
        decision = self.decisions.get(gid, GroupDecision(0, None))
        key = rank_key(self.seed, self.step_id, sample.id)
        copies = decision.full + (1 if decision.threshold is not None and key <= decision.threshold else 0)
        if copies == 0:
            detail = f"group {label} keeps {group.target:.1f} of {group.available} {self.config.unit}"
            yield Filtered("downsampled", detail, keep_payload=False)
            return
        yield Stat(f"out:{group.side}", units * copies)
        yield Stat(f"out_group:{label}", units * copies)
        yield Stat(f"kept_samples_group:{label}", 1)
        yield Stat(f"out_samples_group:{label}", copies)
        yield Stat(f"out_tokens_group:{label}", sample.counts.tokens * copies)
        yield Stat(f"out_supervised_tokens_group:{label}", sample.counts.supervised_tokens * copies)
        if copies > 1:
            yield Stat("repeats", copies - 1)
            yield Stat(f"repeats_group:{label}", copies - 1)
        yield sample
        for k in range(1, copies):
            yield repeat_copy(sample, k, self.step_id)


class _ByInput:
    """Processor of ``(input name, sample)``: the :class:`MixFn` of that input, bound to the plan
    and the decisions (the ParDo's side inputs)."""

    def __init__(self, fns: dict[str, MixFn]) -> None:
        self.fns = fns

    def bind(self, plan: MixPlan, decisions: dict[str, GroupDecision]) -> None:
        for fn in self.fns.values():
            fn.bind(plan, decisions)

    def __call__(
        self, element: tuple[str, Sample], plan: MixPlan, decisions: dict[str, GroupDecision]
    ) -> Iterator[Any]:
        self.bind(plan, decisions)
        name, sample = element
        return self.fns[name](sample)


class _Light:
    """``Sample -> (group id, (rank key, units))``: what planning needs, without the sample."""

    def __init__(self, input_name: str, config: MixConfig, seed: int, step_id: str) -> None:
        self.input_name = input_name
        self.config = config
        self.seed = seed
        self.step_id = step_id

    def __call__(self, sample: Sample) -> tuple[str, tuple[RankKey, int]]:
        gid = group_id(self.input_name, group_of(sample, self.input_name, self.config))
        return gid, (rank_key(self.seed, self.step_id, sample.id), units_of(sample, self.config.unit))


def _rank_pair(light: tuple[str, tuple[RankKey, int]]) -> tuple[str, tuple[bytes, bytes]]:
    gid, (key, units) = light
    return gid, (rank_bytes(key), str(units).encode("ascii"))


def _decide(element: tuple[str, Iterable[tuple[bytes, bytes]]], plan: MixPlan) -> tuple[str, GroupDecision]:
    gid, pairs = element
    ranked = ((rank_from_bytes(key), int(units)) for key, units in pairs)
    return gid, decide_group(plan.groups[gid], ranked, presorted=True)


class Mix(Step):
    """Mixes agent and general samples so that agent data is a share ``eta`` of the output."""

    type_name = "mix"
    config_model = MixConfig
    input_type = Sample
    output_type = Sample
    fan_in: ClassVar[str] = "named"

    @staticmethod
    def _check_names(config: MixConfig, names: list[str]) -> None:
        unknown = sorted((set(config.agent) | set(config.weights)) - set(names))
        if unknown:
            listed = ", ".join(map(repr, unknown))
            raise ValueError(f"{listed} not among the inputs of this step ({', '.join(names)})")
        if not [n for n in names if n not in config.agent]:
            raise ValueError("every input is agent data; name at least one general input")

    @classmethod
    def check_inputs(cls, config: StepConfig, input_names: list[str]) -> None:
        """Validates ``agent`` and ``weights`` against the spec's inputs when the plan is made."""
        assert isinstance(config, MixConfig)
        cls._check_names(config, sorted(input_names))

    def expand(self, inputs: Any) -> dict[str, Any]:
        import apache_beam as beam

        from transforms.beam.records import RecordDoFn
        from transforms.spill import Merge, SortedGroups

        config: MixConfig = self.config  # type: ignore[assignment]
        if isinstance(inputs, beam.PCollection):
            raise ValueError("mix takes named inputs: list the agent and general inputs in 'inputs'")
        names = sorted(inputs)
        try:
            self._check_names(config, names)
        except ValueError as exc:
            raise ValueError(f"step {self.step_id!r}: {exc}") from None
        seed, step_id = self.context.seed, self.step_id

        # Planning runs on each input where it is produced; the samples wait on disk.
        lights = [inputs[name] | f"Light/{name}" >> beam.Map(_Light(name, config, seed, step_id)) for name in names]
        units = [
            light
            | f"Units/{name}" >> beam.Map(lambda kv: (kv[0], kv[1][1]))
            | f"SumUnits/{name}" >> beam.CombinePerKey(sum)
            for name, light in zip(names, lights, strict=True)
        ]
        plan = (
            tuple(units)
            | "Units" >> beam.Flatten()
            | "Available" >> beam.combiners.ToList()
            | "Plan" >> beam.Map(lambda pairs: plan_mix(config, dict(pairs), names))
        )
        ranks = [light | f"Ranks/{name}" >> beam.Map(_rank_pair) for name, light in zip(names, lights, strict=True)]
        decisions = (
            tuple(ranks)
            | "SortRanks" >> SortedGroups(self.context.spill_dir("ranks"))
            | "Decide" >> beam.Map(_decide, plan=beam.pvalue.AsSingleton(plan))
        )
        tagged = [
            inputs[name]
            | f"Tag/{name}" >> beam.Map(lambda s, n=name: (n, s)).with_output_types(beam.typehints.Tuple[str, Sample])
            for name in names
        ]
        keyed_type = beam.typehints.Tuple[str, Sample]
        waiting = tuple(tagged) | "AwaitPlan" >> Merge(self.context.spill_dir("samples"), keyed_type)
        processor = _ByInput({name: MixFn(name, config, seed, step_id) for name in names})
        outputs = waiting | "Select" >> beam.ParDo(
            RecordDoFn(processor, step_id),
            plan=beam.pvalue.AsSingleton(plan),
            decisions=beam.pvalue.AsDict(decisions),
        ).with_outputs(REJECTED, LEDGER, main=MAIN)
        return self._typed(outputs)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        assert isinstance(config, MixConfig)
        stats = ledger.stats
        available = {}
        achieved_units = {}
        for name, units in stats.items():
            if name.startswith("in_group:"):
                input_name, value = json.loads(name.split(":", 1)[1])
                available[group_id(input_name, value)] = units
            elif name.startswith("out_group:"):
                input_name, value = json.loads(name.split(":", 1)[1])
                achieved_units[group_id(input_name, value)] = units
        plan = plan_mix(config, available, [parse_group_id(g)[0] for g in available])
        out = {side: stats.get(f"out:{side}", 0) for side in (AGENT, GENERAL)}
        available_in = {side: stats.get(f"in:{side}", 0) for side in (AGENT, GENERAL)}
        total_out = out[AGENT] + out[GENERAL]
        measures = ("samples", "tokens", "supervised_tokens")

        def per_group(gid: str) -> dict[str, int]:
            found = {name: stats.get(f"{name}_group:{gid}", 0) for name in ("in_samples", "kept_samples", "repeats")}
            found.update({m: stats.get(f"out_{m}_group:{gid}", 0) for m in measures})
            return found

        counted = {gid: per_group(gid) for gid in plan.groups}
        side_sums = {
            side: {
                key: sum(c[key] for gid, c in counted.items() if plan.groups[gid].side == side)
                for key in ("in_samples", "kept_samples", "repeats", *measures)
            }
            for side in (AGENT, GENERAL)
        }

        def share(part: float, whole: float) -> float | None:
            return round(part / whole, 6) if whole else None

        groups = {}
        for gid, group in sorted(plan.groups.items()):
            side_out = out[group.side]
            side_target = plan.target[group.side]
            value = "(none)" if group.value is None else group.value
            label = group.input if group.value == ALL_VALUES else f"{group.input}[{value}]"
            c = counted[gid]
            groups[label] = {
                "side": group.side,
                "available": group.available,
                "target": round(group.target, 3),
                "out": achieved_units.get(gid, 0),
                "target_share_of_side": share(group.target, side_target),
                "achieved_share_of_side": share(achieved_units.get(gid, 0), side_out),
                "available_samples": c["in_samples"],
                "kept_samples": c["kept_samples"],
                "repeats": c["repeats"],
                "out_samples": c["samples"],
                "out_supervised_tokens": c["supervised_tokens"],
                "share_of_side_by": {m: share(c[m], side_sums[group.side][m]) for m in measures},
            }
        sides = {}
        for side in (AGENT, GENERAL):
            c = side_sums[side]
            sides[side] = {
                "available": available_in[side],
                "target": round(plan.target[side], 3),
                "out": out[side],
                "available_samples": c["in_samples"],
                "kept_samples": c["kept_samples"],
                "kept_share": share(c["kept_samples"], c["in_samples"]),
                "repeats": c["repeats"],
                "out_samples": c["samples"],
                "out_tokens": c["tokens"],
                "out_supervised_tokens": c["supervised_tokens"],
            }
        return {
            "unit": config.unit,
            "strategy": config.strategy,
            "max_copies": config.max_copies,
            "capped": plan.capped,
            "target_eta": config.eta,
            "achieved_eta": share(out[AGENT], total_out),
            "achieved_eta_by": {
                m: share(side_sums[AGENT][m], side_sums[AGENT][m] + side_sums[GENERAL][m]) for m in measures
            },
            "available_eta": round(available_in[AGENT] / max(1, available_in[AGENT] + available_in[GENERAL]), 6),
            "sides": sides,
            "groups": groups,
            "repeats": stats.get("repeats", 0),
        }
