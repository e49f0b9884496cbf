"""Step ``balance``: Agent-FLAN capability balancing by per-capability weights.

A weight is the share of a capability's supervised data to keep: the default reasoning 1.0,
retrieval 0.25, understanding 0.75, instruction_following 1.0 is the paper's; the released
``tflan_60p_r10r5u7`` suggests retrieval 0.5 (see docs). Capabilities not listed keep weight 1.

Modes:
- ``loss_mask`` (default): each supervised assistant turn of capability c keeps its loss with
  probability w_c, decided by a keyed hash of (seed, step, sample id, turn index); conversations
  stay whole. A sample left with no supervised turn is filtered (``no_supervised_turn``).
- ``subsample``: whole samples are kept with the weight of their dominant capability (by
  supervised tokens); for data whose samples are capability-pure (instruction pairs, general).

The target share of capability c in supervised tokens is w_c T_c / sum_k w_k T_k, with T the
tokens before balancing; the manifest records target and achieved shares in tokens and turns.
Tokens are counted by ``counter`` (whitespace words, bytes, or a local HF tokenizer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from schemas import Capability, Message, Role, Sample, count_tokens
from transforms.base import Filtered, RecordStep, Stat, StepConfig, StepContext
from transforms.counting import CounterName, TokenCounter
from transforms.sampling import keyed_fraction

PAPER_WEIGHTS = {"reasoning": 1.0, "retrieval": 0.25, "understanding": 0.75, "instruction_following": 1.0}
RELEASE_WEIGHTS = {"reasoning": 1.0, "retrieval": 0.5, "understanding": 0.75, "instruction_following": 1.0}
UNTAGGED = "untagged"


class BalanceConfig(StepConfig):
    """``weights`` given in a spec are laid over the paper's defaults: ``{retrieval: 0.5}`` keeps
    understanding at 0.75."""

    weights: dict[Capability, float] = Field(
        default_factory=lambda: {Capability(k): v for k, v in PAPER_WEIGHTS.items()}
    )
    mode: Literal["loss_mask", "subsample"] = "loss_mask"
    counter: CounterName = "whitespace"
    tokenizer: str | None = None

    @field_validator("weights", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        return {**PAPER_WEIGHTS, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _check(self) -> BalanceConfig:
        for capability, weight in self.weights.items():
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"weight of {capability.value} must be in [0, 1], got {weight}")
        if self.counter == "tokenizer" and not self.tokenizer:
            raise ValueError("counter 'tokenizer' needs 'tokenizer'")
        return self

    def weight(self, capability: Capability | None) -> float:
        return 1.0 if capability is None else self.weights.get(capability, 1.0)


def _name(capability: Capability | None) -> str:
    return capability.value if capability is not None else UNTAGGED


def _supervised(messages: list[Message]) -> Iterator[tuple[int, Message]]:
    return ((i, m) for i, m in enumerate(messages) if m.role is Role.ASSISTANT and m.loss)


class Balancer:
    """Picklable processor of the balance step."""

    def __init__(self, config: BalanceConfig, context: StepContext) -> None:
        self.config = config
        self.context = context
        self.count = TokenCounter(config.counter, config.tokenizer)

    def _tally(self, prefix: str, messages: list[Message]) -> Iterator[Stat]:
        tokens: Counter[str] = Counter()
        turns: Counter[str] = Counter()
        for _, message in _supervised(messages):
            name = _name(message.capability)
            tokens[name] += self.count(message.content)
            turns[name] += 1
        for name in sorted(tokens.keys() | turns.keys()):
            yield Stat(f"{prefix}_tokens:{name}", tokens[name])
            yield Stat(f"{prefix}_turns:{name}", turns[name])

    def _finish(self, sample: Sample, messages: list[Message]) -> Sample:
        lineage = sample.lineage.model_copy(update={"steps": [*sample.lineage.steps, self.context.step_id]})
        return sample.model_copy(update={"messages": messages, "lineage": lineage, "counts": count_tokens(messages)})

    def __call__(self, sample: Sample) -> Iterator[Any]:
        yield from self._tally("before", sample.messages)
        seed, step = self.context.seed, self.context.step_id
        if self.config.mode == "subsample":
            weights: Counter[Capability | None] = Counter()
            for _, message in _supervised(sample.messages):
                weights[message.capability] += self.count(message.content)
            dominant = min(weights, key=lambda c: (-weights[c], _name(c))) if weights else None
            weight = self.config.weight(dominant)
            if weight < 1.0 and keyed_fraction(seed, step, sample.id) >= weight:
                yield Filtered("balance_subsample", f"dominant capability {_name(dominant)} kept at weight {weight}")
                return
            yield from self._tally("after", sample.messages)
            yield self._finish(sample, sample.messages)
            return
        messages = list(sample.messages)
        for index, message in _supervised(sample.messages):
            weight = self.config.weight(message.capability)
            if weight < 1.0 and keyed_fraction(seed, step, f"{sample.id}:{index}") >= weight:
                messages[index] = message.model_copy(update={"loss": False})
        if not any(m.loss for m in messages):
            yield Filtered("no_supervised_turn", "every supervised turn was masked by balancing")
            return
        yield from self._tally("after", messages)
        yield self._finish(sample, messages)


def shares(stats: dict[str, int], prefix: str) -> dict[str, int]:
    return {key.split(":", 1)[1]: value for key, value in stats.items() if key.startswith(prefix + ":")}


def _normalise(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values())
    return {k: round(v / total, 4) for k, v in sorted(values.items())} if total else {}


class Balance(RecordStep):
    """Capability balancing by weights (see the module docstring)."""

    type_name = "balance"
    config_model = BalanceConfig
    input_type = Sample
    output_type = Sample

    def check(self) -> None:
        if self.config.counter == "tokenizer":
            TokenCounter("tokenizer", self.config.tokenizer)("check")

    def processor(self) -> Balancer:
        return Balancer(self.config, self.context)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any] | None:
        assert isinstance(config, BalanceConfig)
        summary: dict[str, Any] = {
            "mode": config.mode,
            "counter": config.counter,
            "weights": {c.value: w for c, w in config.weights.items()},
        }
        for unit in ("tokens", "turns"):
            before = shares(ledger.stats, f"before_{unit}")
            after = shares(ledger.stats, f"after_{unit}")
            if not before:
                continue
            weighted = {
                name: n * config.weight(None if name == UNTAGGED else Capability(name)) for name, n in before.items()
            }
            target, achieved = _normalise(weighted), _normalise({k: float(v) for k, v in after.items()})
            summary[unit] = {
                "before": dict(sorted(before.items())),
                "after": dict(sorted(after.items())),
                "target_share": target,
                "achieved_share": achieved,
                "max_abs_error_pp": round(
                    100 * max((abs(target[k] - achieved.get(k, 0)) for k in target), default=0), 3
                ),
            }
        return summary
