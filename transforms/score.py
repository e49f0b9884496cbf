"""Step ``score``: Trajectory -> Trajectory with a reward from a sequence-classification model.

Runs a Hugging Face ``AutoModelForSequenceClassification`` from a local directory (model and
tokenizer saved with ``save_pretrained``; relative paths start at the spec's folder) through
Beam's ``RunInference`` with a custom :class:`TrajectoryScorer` model handler, and writes the
score into ``reward`` (or ``metadata.<key>``). Put it before ``reward_filter`` to filter
episodes that have no environment reward.

Guarantees:

- the model sees the trajectory rendered as ``{role}: {text}`` lines (roles configurable),
  truncated to ``max_length`` tokens from the left by default (the end of an episode, where
  success shows, is kept);
- the score is the softmax probability of ``label`` (default: the last class; sigmoid for a
  one-logit model) or its raw logit, rounded to ``decimals`` places;
- each trajectory is run through the model on its own (``exact: true``, the default), so its
  score does not depend on which other trajectories share its batch: reruns on any runner or
  worker count give identical rewards;
- a batch the model fails on becomes dead letters (``inference_error``), one per trajectory;
  nothing is downloaded (``local_files_only``).
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from schemas import Role, Trajectory
from transforms.base import LEDGER, MAIN, REJECTED, Stat, Step, StepConfig

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.ml.inference.base import PredictionResult


class ScoreConfig(StepConfig):
    model: str
    label: int | str | None = None
    output: Literal["probability", "logit"] = "probability"
    field: str = "reward"
    overwrite: bool = True
    roles: list[Role] = Field(default_factory=lambda: list(Role), min_length=1)
    max_length: int = Field(512, ge=8)
    truncation_side: Literal["left", "right"] = "left"
    batch_size: int = Field(8, ge=1)
    exact: bool = True
    decimals: int = Field(6, ge=0, le=12)
    torch_threads: int | None = Field(None, ge=1)

    @field_validator("field")
    @classmethod
    def _field_path(cls, value: str) -> str:
        if value != "reward" and not (value.startswith("metadata.") and len(value) > 9 and value.count(".") == 1):
            raise ValueError("field must be 'reward' or 'metadata.<key>'")
        return value


def render(trajectory: Trajectory, roles: Sequence[Role]) -> str:
    """The text the model scores: one ``role: text`` line per turn of the listed roles."""
    wanted = set(roles)
    return "\n".join(f"{turn.role.value}: {turn.text}" for turn in trajectory.turns if turn.role in wanted)


def label_index(model_config: Any, label: int | str | None) -> int:
    """The class whose score is the reward: an index, a label name, or (``None``) the last class."""
    num_labels = int(model_config.num_labels)
    if label is None:
        return num_labels - 1
    if isinstance(label, str):
        label2id = {str(k): int(v) for k, v in (model_config.label2id or {}).items()}
        if label not in label2id:
            raise ValueError(f"label {label!r} is not one of the model's labels {sorted(label2id)}")
        return label2id[label]
    if not 0 <= label < num_labels:
        raise ValueError(f"label {label} is out of range for a model with {num_labels} labels")
    return label


def score_logits(logits: Any, index: int, output: str, decimals: int) -> list[float]:
    """Rewards from a ``[batch, num_labels]`` logits tensor."""
    import torch

    logits = logits.detach().to(torch.float64)
    if output == "logit":
        values = logits[:, index]
    elif logits.shape[-1] == 1:
        values = torch.sigmoid(logits[:, 0])
    else:
        values = torch.softmax(logits, dim=-1)[:, index]
    return [round(float(v), decimals) for v in values]


@dataclass
class LoadedModel:
    """What ``load_model`` returns (Beam's model sharing needs a weak-referenceable object)."""

    tokenizer: Any
    model: Any
    index: int


def apply_score(trajectory: Trajectory, score: float, config: ScoreConfig) -> tuple[Trajectory, bool]:
    """``trajectory`` with ``score`` written to ``config.field``; the flag says whether it was
    written (``overwrite: false`` keeps an existing value)."""
    if not math.isfinite(score):
        raise ValueError(f"the model gave a non-finite score {score!r}")
    if config.field == "reward":
        if trajectory.reward is not None and not config.overwrite:
            return trajectory, False
        return trajectory.model_copy(update={"reward": score}), True
    key = config.field.split(".", 1)[1]
    if key in trajectory.metadata and not config.overwrite:
        return trajectory, False
    return trajectory.model_copy(update={"metadata": {**trajectory.metadata, key: score}}), True


class ApplyScore:
    """Processor on RunInference's results: writes the score, counts written and kept values."""

    def __init__(self, config: ScoreConfig) -> None:
        self.config = config

    def __call__(self, result: PredictionResult) -> Iterator[Any]:
        score = float(result.inference)
        trajectory, written = apply_score(result.example, score, self.config)
        yield Stat("scored" if written else "kept_existing", 1)
        if self.config.output == "probability":
            yield Stat(f"score_decile:{min(9, max(0, int(score * 10)))}", 1)
        yield trajectory


class Score(Step):
    """Scores trajectories with a local sequence-classification model (RunInference)."""

    type_name = "score"
    config_model = ScoreConfig
    input_type = Trajectory
    output_type = Trajectory

    def model_dir(self) -> str:
        """The model directory, resolved against the spec's folder; it must hold ``config.json``."""
        config: ScoreConfig = self.config  # type: ignore[assignment]
        path = config.model
        if "://" not in path and not posixpath.isabs(path):
            path = posixpath.normpath(posixpath.join(self.context.base_dir, path))
        if "://" not in path and not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"step {self.step_id!r}: {path!r} is not a model directory (no config.json)")
        return path

    def check(self) -> None:
        self.model_dir()

    def expand(self, trajectories: beam.PCollection) -> dict[str, Any]:
        import apache_beam as beam
        from apache_beam.ml.inference.base import RunInference

        from transforms.beam.records import RecordDoFn
        from transforms.beam.score import FailedBatches, TrajectoryScorer

        config: ScoreConfig = self.config  # type: ignore[assignment]
        handler = TrajectoryScorer(self.model_dir(), config)
        results, failures = trajectories | "Infer" >> RunInference(handler).with_exception_handling()
        applied = results | "Apply" >> beam.ParDo(RecordDoFn(ApplyScore(config), self.step_id)).with_outputs(
            REJECTED, LEDGER, main=MAIN
        )
        failed = failures.failed_inferences | "Failed" >> beam.ParDo(FailedBatches(self.step_id)).with_outputs(
            REJECTED, LEDGER, main=MAIN
        )
        result = {
            MAIN: applied[MAIN],
            REJECTED: (applied[REJECTED], failed[REJECTED]) | "Merge/Rejected" >> beam.Flatten(),
            LEDGER: (applied[LEDGER], failed[LEDGER]) | "Merge/Ledger" >> beam.Flatten(),
        }
        return self._typed(result)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        stats = ledger.stats
        return {
            "scored": stats.get("scored", 0),
            "kept_existing": stats.get("kept_existing", 0),
            "inference_errors": ledger.dead_letter.get("inference_error", 0),
            "score_deciles": [stats.get(f"score_decile:{d}", 0) for d in range(10)],
        }
