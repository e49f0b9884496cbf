"""Step ``decontaminate``: Sample -> Sample, samples that overlap evaluation sets removed.

AgentTuning's rule: tokens are lowercased, whitespace-separated words; a token of a sample is
*covered* when it lies inside an ``n``-gram (default 10) that also occurs in an evaluation text;
a sample whose covered share is above ``threshold`` (0.8) is *dirty* and is filtered as
``contaminated`` (the detail gives the coverage and which evaluation sets matched). Below
``clean_below`` (0.2) it counts as clean; in between it is kept and counted as ``ambiguous``.
n-grams never span two messages; only messages of the listed ``roles`` count (system prompts
are left out by default). A message shorter than ``n`` tokens counts in the total but cannot be
covered.

Evaluation sets are files (json, jsonl, parquet; globs; relative to the spec's folder) whose
records are strings, or objects whose ``fields`` hold a string, a list of strings, or a list of
``{content|text|value}`` objects (e.g. MT-Bench ``turns``). They are fingerprinted in the
manifest like any input. An evaluation set that yields no n-gram is an error, not a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import Role, Sample
from transforms.base import Failed, Filtered, RecordStep, Stat, StepConfig
from transforms.files import iter_records, resolve_paths

DEFAULT_FIELDS = ["text", "prompt", "question", "turns", "instruction", "input", "content"]


class EvalSet(BaseModel):
    """One evaluation set: files and where their text lives."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(min_length=1)
    name: str | None = None
    fields: list[str] = Field(default_factory=lambda: list(DEFAULT_FIELDS), min_length=1)

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def label(self) -> str:
        return self.name or self.paths[0]


class DecontaminateConfig(StepConfig):
    eval_sets: list[EvalSet] = Field(min_length=1)
    n: int = Field(10, ge=1)
    threshold: float = Field(0.8, ge=0.0, le=1.0)
    clean_below: float = Field(0.2, ge=0.0, le=1.0)
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
    """The tokenisation of the rule: lowercased, split on whitespace."""
    return text.lower().split()


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, dict):
                for key in ("content", "text", "value"):
                    if isinstance(item.get(key), str):
                        yield item[key]
                        break


def eval_texts(obj: Any, fields: list[str]) -> list[str]:
    """The evaluation texts of one record: the record itself if it is a string, else every
    listed field that is present (dotted paths allowed)."""
    if isinstance(obj, str):
        return [obj]
    found: list[str] = []
    if isinstance(obj, dict):
        for path in fields:
            value: Any = obj
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            found.extend(_texts(value))
    return found


def ngram_keys(words: list[str], n: int) -> Iterator[int]:
    """Hashes of the ``n``-grams of ``words``, in order (one per start position)."""
    for i in range(len(words) - n + 1):
        yield hash(tuple(words[i : i + n]))


class NgramIndex:
    """The evaluation n-grams: hash -> bit mask of the evaluation sets that contain it.

    Hashes are Python's, so an index is only compared with samples in the process that built
    it (which the step guarantees: it is built in ``setup`` on each worker).
    """

    def __init__(self, n: int, names: list[str]) -> None:
        self.n = n
        self.names = names
        self.masks: dict[int, int] = {}
        self.sizes = [0] * len(names)

    def add(self, set_index: int, text: str) -> None:
        bit = 1 << set_index
        before = len(self.masks)
        for key in ngram_keys(tokens(text), self.n):
            self.masks[key] = self.masks.get(key, 0) | bit
        self.sizes[set_index] += len(self.masks) - before

    def coverage(self, texts: list[str]) -> tuple[int, int, list[str]]:
        """(covered tokens, total tokens, names of the evaluation sets that matched)."""
        n = self.n
        covered_total = total = 0
        mask = 0
        for text in texts:
            words = tokens(text)
            total += len(words)
            if len(words) < n:
                continue
            covered = bytearray(len(words))
            for i, key in enumerate(ngram_keys(words, n)):
                hit = self.masks.get(key)
                if hit:
                    covered[i : i + n] = b"\x01" * n
                    mask |= hit
            covered_total += sum(covered)
        return covered_total, total, [name for i, name in enumerate(self.names) if mask >> i & 1]


def build_index(config: DecontaminateConfig, files: list[list[str]]) -> NgramIndex:
    """Read every evaluation set (``files[i]`` are the files of ``config.eval_sets[i]``)."""
    index = NgramIndex(config.n, [s.label() for s in config.eval_sets])
    for i, (eval_set, paths) in enumerate(zip(config.eval_sets, files, strict=True)):
        for path in paths:
            for raw in iter_records(path, config.max_record_bytes):
                if isinstance(raw, Failed):
                    where = f"eval set {eval_set.label()!r}: cannot read {raw.location}"
                    raise ValueError(f"{where}: {raw.reason}: {raw.detail}")
                for text in eval_texts(raw.obj, eval_set.fields):
                    index.add(i, text)
        if index.sizes[i] == 0:
            raise ValueError(
                f"eval set {eval_set.label()!r} gives no {config.n}-gram: check 'fields' ({', '.join(eval_set.fields)})"
            )
    return index


def sample_texts(sample: Sample, roles: list[Role]) -> list[str]:
    wanted = set(roles)
    return [m.content for m in sample.messages if m.role in wanted]


class DecontaminateFn:
    """Processor: coverage of each sample by the evaluation n-grams (index built in ``setup``)."""

    def __init__(self, config: DecontaminateConfig, files: list[list[str]]) -> None:
        self.config = config
        self.files = files
        self.index: NgramIndex | None = None

    def setup(self) -> None:
        if self.index is None:
            self.index = build_index(self.config, self.files)

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "files": self.files, "index": None}

    def __call__(self, sample: Sample) -> Iterator[Any]:
        self.setup()
        assert self.index is not None
        config = self.config
        covered, total, matched = self.index.coverage(sample_texts(sample, config.roles))
        share = covered / total if total else 0.0
        yield Stat("tokens", total)
        yield Stat("covered_tokens", covered)
        yield Stat(f"coverage_decile:{min(9, int(share * 10))}", 1)
        if share > config.threshold:
            yield Stat("dirty", 1)
            yield Filtered(
                "contaminated",
                f"coverage {share:.4f} > {config.threshold} ({covered}/{total} tokens in {config.n}-grams of "
                f"{', '.join(matched)})",
            )
            return
        yield Stat("clean" if share < config.clean_below else "ambiguous", 1)
        if config.annotate:
            sample = sample.model_copy(update={"metadata": {**sample.metadata, config.annotate: round(share, 6)}})
        yield sample


class Decontaminate(RecordStep):
    """Filters samples whose tokens are mostly covered by evaluation-set n-grams."""

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
        return {
            "n": config.n,
            "threshold": config.threshold,
            "eval_sets": [s.label() for s in config.eval_sets],
            "in": ledger.in_,
            "contaminated": ledger.filtered.get("contaminated", 0),
            "clean": stats.get("clean", 0),
            "ambiguous": stats.get("ambiguous", 0),
            "covered_token_share": round(stats.get("covered_tokens", 0) / tokens_total, 6) if tokens_total else None,
            "coverage_deciles": [stats.get(f"coverage_decile:{d}", 0) for d in range(10)],
        }
