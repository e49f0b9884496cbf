"""``eval_overlap``: evaluation items contained in training samples, measured from the item's side.

Each evaluation text (a record's listed fields; MT-Bench ``turns``, BFCL ``question``, ...) is an
item. A sample *contains* an item when at least ``min_coverage`` (0.8) of the item's distinct
word ``n``-grams (10, as AgentTuning's rule) occur in the sample's user and assistant texts
(:class:`transforms.quality.ngrams.EvalIndex`), so a benchmark question hidden in a long
conversation is found. ``count`` is the number of samples that contain an item; the details give
the items covered per evaluation set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from schemas import Role, Sample
from schemas.audit import MAX_EXAMPLES, EvalSetSpec
from transforms.quality.check import Example, Finding, Flags, SampleCheck, Verdict, clip, keep_smallest
from transforms.quality.ngrams import EvalIndex


class OverlapOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(10, ge=1)
    min_tokens: int = Field(6, ge=1)
    min_coverage: float = Field(0.8, gt=0.0, le=1.0)
    roles: list[Role] = Field(default_factory=lambda: [Role.USER, Role.ASSISTANT])
    max_record_bytes: int = Field(16 * 1024 * 1024, ge=1)


@dataclass
class OverlapState(Flags):
    items: set[tuple[str, str]] = field(default_factory=set)


def build_eval_index(
    eval_sets: tuple[EvalSetSpec, ...], base_dir: str, n: int, min_tokens: int, max_record_bytes: int
) -> EvalIndex:
    """An :class:`EvalIndex` of every item of ``eval_sets``, read by ``decontaminate``'s reader
    (so both see the same items; a set that gives no item is an error)."""
    from transforms.decontaminate import DecontaminateConfig, EvalSet, build_index
    from transforms.files import resolve_paths

    sets = [EvalSet.model_validate(s.model_dump()) for s in eval_sets]
    config = DecontaminateConfig(eval_sets=sets, n=n, min_tokens=min_tokens, max_record_bytes=max_record_bytes)
    return build_index(config, [resolve_paths(s.paths, base_dir) for s in sets])


class EvalOverlap(SampleCheck):
    name = "eval_overlap"
    definition = (
        "Share of samples that contain an evaluation item: at least 80 % of the item's distinct "
        "word 10-grams occur in the sample's user and assistant text (coverage measured over the "
        "evaluation item, so a question inside a long conversation is caught)."
    )
    threshold = 0.0
    severity = "block"
    Options = OverlapOptions

    def configured(self) -> bool:
        return bool(self.env.eval_sets)

    def setup(self) -> None:
        if not hasattr(self, "_index"):
            o: OverlapOptions = self.options  # type: ignore[assignment]
            self._index = build_eval_index(self.env.eval_sets, self.env.base_dir, o.n, o.min_tokens, o.max_record_bytes)
            self._roles = set(o.roles)

    def new_state(self) -> OverlapState:
        return OverlapState()

    def observe(self, state: OverlapState, sample: Sample) -> None:  # type: ignore[override]
        self.setup()
        texts = [m.content for m in sample.messages if m.role in self._roles]
        matches = self._index.matches(texts, self.options.min_coverage)  # type: ignore[attr-defined]
        state.total += 1
        if matches:
            state.items.update((m.eval_set, m.item) for m in matches)
            best = matches[0]
            state.count += 1
            state.reasons[best.eval_set] += 1
            excerpt = clip(f"{best.eval_set} {best.item} ({best.share:.0%}): {best.text}")
            state.examples.append(Example(sample.id, excerpt))
            if len(state.examples) > 4 * MAX_EXAMPLES:
                state.examples = keep_smallest(state.examples)

    def inspect(self, sample: Sample) -> Verdict | None:  # pragma: no cover - observe is overridden
        raise NotImplementedError

    def merge(self, state: OverlapState, other: OverlapState) -> OverlapState:  # type: ignore[override]
        SampleCheck.merge(self, state, other)
        state.items |= other.items
        return state

    def finish(self, state: OverlapState) -> Finding:  # type: ignore[override]
        finding = SampleCheck.finish(self, state)
        self.setup()
        sizes = self._index.item_counts()
        covered: dict[str, int] = {}
        for eval_set, _ in state.items:
            covered[eval_set] = covered.get(eval_set, 0) + 1
        finding.details["items"] = {
            name: {"items": n, "covered": covered.get(name, 0)} for name, n in sorted(sizes.items())
        }
        return finding
