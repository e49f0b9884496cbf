"""Step ``decontaminate``: Sample -> Sample, samples that contain evaluation items removed.

AgentTuning's rule is 10-gram matching against the evaluation tasks. It is measured in both
directions, from one index (:class:`transforms.quality.ngrams.EvalIndex`):

- **evaluation side** (the default decision): the share of an evaluation item's distinct
  ``n``-grams that occur in the sample. An evaluation question copied verbatim into a long
  conversation scores 1.0 however long the conversation is. The sample's figure is its best
  item's share; it is flagged when that share is ``>= eval_threshold`` (0.8).
- **training side** (the paper's wording): the share of the sample's tokens that lie inside an
  ``n``-gram of some evaluation item. Flagged when ``> threshold`` (0.8); below ``clean_below``
  (0.2) the sample counts as clean, in between as ambiguous (statistics only).

``rule`` decides what is filtered as ``contaminated``: ``either`` (default), ``eval_side`` or
``training_side``; both directions are always measured and reported. The detail of a filtered
sample names the evaluation set and item that matched best, with both figures.

Tokens are lowercased runs of word characters; n-grams never span two messages; only messages of
the listed ``roles`` count (system prompts are left out by default). An evaluation item is one
text of a record (one MT-Bench turn, one BFCL user question); items shorter than ``n`` tokens but
at least ``min_tokens`` long are matched as a whole; shorter ones are not indexed.

Evaluation sets are files (json, jsonl, parquet; globs; relative to the spec's folder) whose
records are strings, or objects whose ``fields`` hold a string, a (nested) list of strings, or a
(nested) list of ``{content|text|value}`` objects (MT-Bench ``turns``, BFCL ``question``). They
are fingerprinted in the manifest like any input. An evaluation set that yields no item is an
error, not a no-op. Guarantee: the decision for a sample depends only on the sample, the config
and the evaluation files (exact counts, no sampling), so it is the same on every runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import Role, Sample
from transforms.base import Failed, Filtered, RecordStep, Stat, StepConfig
from transforms.files import iter_records, resolve_paths
from transforms.quality.ngrams import EvalIndex, Measurement, word_tokens

DEFAULT_FIELDS = ["text", "prompt", "question", "turns", "instruction", "input", "content"]
DEFAULT_ID_FIELDS = ["id", "question_id", "uid"]
#: Smallest share asked of the index: every item that shares one n-gram with the sample.
_ANY_SHARE = 1e-12


class EvalSet(BaseModel):
    """One evaluation set: files, where their text lives, which field names an item, and
    (``item_roles``) which messages of a ``{role, content}`` list count (e.g. ``[user]`` for
    BFCL, whose live sets carry system prompts and a few assistant turns beside the
    questions); ``None`` keeps every message."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(min_length=1)
    name: str | None = None
    fields: list[str] = Field(default_factory=lambda: list(DEFAULT_FIELDS), min_length=1)
    id_field: str | None = None
    item_roles: list[str] | None = None

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def label(self) -> str:
        return self.name or self.paths[0]


class DecontaminateConfig(StepConfig):
    eval_sets: list[EvalSet] = Field(min_length=1)
    n: int = Field(10, ge=1)
    rule: Literal["either", "eval_side", "training_side"] = "either"
    eval_threshold: float = Field(0.8, gt=0.0, le=1.0)
    threshold: float = Field(0.8, ge=0.0, le=1.0)
    clean_below: float = Field(0.2, ge=0.0, le=1.0)
    min_tokens: int = Field(8, ge=1)
    roles: list[Role] = Field(default_factory=lambda: [Role.USER, Role.ASSISTANT, Role.TOOL], min_length=1)
    annotate: str | None = None
    max_record_bytes: int = Field(16 * 1024 * 1024, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> DecontaminateConfig:
        if self.clean_below > self.threshold:
            raise ValueError("clean_below must not exceed threshold")
        if len({s.label() for s in self.eval_sets}) != len(self.eval_sets):
            raise ValueError("eval sets need distinct names (set 'name')")
        return self


def tokens(text: str) -> list[str]:
    """The tokenisation of the rule: lowercased runs of word characters."""
    return word_tokens(text)


def _texts(value: Any, roles: list[str] | None = None) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str | list):
                yield from _texts(item, roles)
            elif isinstance(item, dict):
                if roles is not None and "role" in item and item["role"] not in roles:
                    continue
                for key in ("content", "text", "value"):
                    if isinstance(item.get(key), str):
                        yield item[key]
                        break


def eval_texts(obj: Any, fields: list[str], roles: list[str] | None = None) -> list[str]:
    """The evaluation texts of one record: the record itself if it is a string, else every
    listed field that is present (dotted paths allowed); in lists of messages, only those
    whose ``role`` is in ``roles`` (when given; messages without a role always count)."""
    if isinstance(obj, str):
        return [obj]
    found: list[str] = []
    if isinstance(obj, dict):
        for path in fields:
            value: Any = obj
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            found.extend(_texts(value, roles))
    return found


def item_id(obj: Any, eval_set: EvalSet, location: str) -> str:
    """The name of a record in details: its ``id_field`` (default ``id``, ``question_id``,
    ``uid``), else its location (``file:line n``)."""
    if isinstance(obj, dict):
        for name in [eval_set.id_field] if eval_set.id_field else DEFAULT_ID_FIELDS:
            value = obj.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
    return location


def build_index(config: DecontaminateConfig, files: list[list[str]]) -> EvalIndex:
    """Read every evaluation set (``files[i]`` are the files of ``config.eval_sets[i]``). The
    items of a record with several texts are keyed ``<id>[<k>]`` (k from 0)."""
    index = EvalIndex(config.n, config.min_tokens)
    for eval_set, paths in zip(config.eval_sets, files, strict=True):
        name = eval_set.label()
        before = len(index)
        for path in paths:
            for raw in iter_records(path, config.max_record_bytes):
                if isinstance(raw, Failed):
                    where = f"eval set {name!r}: cannot read {raw.location}"
                    raise ValueError(f"{where}: {raw.reason}: {raw.detail}")
                texts = eval_texts(raw.obj, eval_set.fields, eval_set.item_roles)
                key = item_id(raw.obj, eval_set, raw.location)
                for k, text in enumerate(texts):
                    index.add(name, key if len(texts) == 1 else f"{key}[{k}]", text)
        if len(index) == before:
            raise ValueError(
                f"eval set {name!r} gives no item of {config.min_tokens}+ tokens: "
                f"check 'fields' ({', '.join(eval_set.fields)}) and 'min_tokens'"
            )
    return index


def sample_texts(sample: Sample, roles: list[Role]) -> list[str]:
    wanted = set(roles)
    return [m.content for m in sample.messages if m.role in wanted]


def _decile(share: float) -> int:
    return min(9, int(share * 10))


def _snippet(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(measurement: Measurement, config: DecontaminateConfig) -> str:
    """The detail of a contaminated sample: the best item and both directions."""
    n = config.n
    parts = []
    if measurement.matches:
        best = measurement.matches[0]
        parts.append(
            f"eval side {best.share:.4f} (>= {config.eval_threshold}: {best.share >= config.eval_threshold}): "
            f"{best.eval_set} item {best.item} ({best.grams} distinct n-grams) {_snippet(best.text)!r}"
        )
    share = measurement.training_share
    sets = ", ".join(measurement.covered_sets) or "none"
    parts.append(
        f"training side {share:.4f} (> {config.threshold}: {share > config.threshold}): "
        f"{measurement.covered}/{measurement.tokens} tokens in {n}-grams of {sets}"
    )
    return "; ".join(parts)


class DecontaminateFn:
    """Processor: both coverage directions of each sample (index built in ``setup``)."""

    def __init__(self, config: DecontaminateConfig, files: list[list[str]]) -> None:
        self.config = config
        self.files = files
        self.index: EvalIndex | None = None

    def setup(self) -> None:
        if self.index is None:
            self.index = build_index(self.config, self.files)

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "files": self.files, "index": None}

    def __call__(self, sample: Sample) -> Iterator[Any]:
        self.setup()
        assert self.index is not None
        config = self.config
        measurement = self.index.measure(sample_texts(sample, config.roles), _ANY_SHARE)
        share = measurement.training_share
        best = measurement.matches[0] if measurement.matches else None
        eval_share = best.share if best else 0.0
        yield Stat("tokens", measurement.tokens)
        yield Stat("covered_tokens", measurement.covered)
        yield Stat(f"coverage_decile:{_decile(share)}", 1)
        yield Stat(f"eval_coverage_decile:{_decile(eval_share)}", 1)
        eval_hit = eval_share >= config.eval_threshold
        training_hit = share > config.threshold
        if eval_hit:
            yield Stat("eval_side", 1)
            flagged = sorted({m.eval_set for m in measurement.matches if m.share >= config.eval_threshold})
            for name in flagged:
                yield Stat(f"eval_side:{name}", 1)
        if training_hit:
            yield Stat("dirty", 1)
            for name in measurement.covered_sets:
                yield Stat(f"training_side:{name}", 1)
        else:
            yield Stat("clean" if share < config.clean_below else "ambiguous", 1)
        contaminated = {"either": eval_hit or training_hit, "eval_side": eval_hit, "training_side": training_hit}
        if contaminated[config.rule]:
            culprit = best.eval_set if best else measurement.covered_sets[0]
            yield Stat(f"contaminated_by:{culprit}", 1)
            yield Filtered("contaminated", describe(measurement, config))
            return
        if config.annotate:
            note = {"eval_side": round(eval_share, 6), "training_side": round(share, 6)}
            if best is not None:
                note["eval_item"] = f"{best.eval_set}/{best.item}"
            sample = sample.model_copy(update={"metadata": {**sample.metadata, config.annotate: note}})
        yield sample


class Decontaminate(RecordStep):
    """Filters samples that contain an evaluation item (evaluation side) or are mostly made of
    evaluation n-grams (training side), as ``rule`` says; reports both directions."""

    type_name = "decontaminate"
    config_model = DecontaminateConfig
    input_type = Sample
    output_type = Sample

    def eval_files(self) -> list[list[str]]:
        """The files of each evaluation set, resolved against the spec's folder."""
        if not hasattr(self, "_eval_files"):
            config: DecontaminateConfig = self.config  # type: ignore[assignment]
            self._eval_files = [resolve_paths(s.paths, self.context.base_dir) for s in config.eval_sets]
        return self._eval_files

    def check(self) -> None:
        self.eval_files()

    def input_files(self) -> list[str]:
        """Every evaluation file (the runner fingerprints them in the manifest)."""
        return sorted({path for paths in self.eval_files() for path in paths})

    def processor(self) -> DecontaminateFn:
        return DecontaminateFn(self.config, self.eval_files())  # type: ignore[arg-type]

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        assert isinstance(config, DecontaminateConfig)
        stats = ledger.stats
        tokens_total = stats.get("tokens", 0)
        names = [s.label() for s in config.eval_sets]
        return {
            "n": config.n,
            "rule": config.rule,
            "eval_sets": names,
            "in": ledger.in_,
            "contaminated": ledger.filtered.get("contaminated", 0),
            "contaminated_by_set": {name: stats.get(f"contaminated_by:{name}", 0) for name in names},
            "eval_side": {
                "threshold": config.eval_threshold,
                "flagged": stats.get("eval_side", 0),
                "flagged_by_set": {name: stats.get(f"eval_side:{name}", 0) for name in names},
                "best_item_coverage_deciles": [stats.get(f"eval_coverage_decile:{d}", 0) for d in range(10)],
            },
            "training_side": {
                "threshold": config.threshold,
                "flagged": stats.get("dirty", 0),
                "flagged_by_set": {name: stats.get(f"training_side:{name}", 0) for name in names},
                "clean": stats.get("clean", 0),
                "ambiguous": stats.get("ambiguous", 0),
                "covered_token_share": round(stats.get("covered_tokens", 0) / tokens_total, 6)
                if tokens_total
                else None,
                "coverage_deciles": [stats.get(f"coverage_decile:{d}", 0) for d in range(10)],
            },
        }
