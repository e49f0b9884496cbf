"""The Beam side of :mod:`transforms.score`: the RunInference model handler and the dead
letters of failed batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from schemas import Trajectory, clip
from transforms.base import DEAD_LETTER, IN
from transforms.beam.records import Accounting
from transforms.score import LoadedModel, ScoreConfig, label_index, render, score_logits


class TrajectoryScorer(ModelHandler[Trajectory, PredictionResult, Any]):
    """RunInference model handler: local HF sequence classifier over rendered trajectories."""

    def __init__(self, model_dir: str, config: ScoreConfig) -> None:
        super().__init__(min_batch_size=1, max_batch_size=config.batch_size)
        self.model_dir = model_dir
        self.config = config

    def load_model(self) -> LoadedModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if self.config.torch_threads is not None:
            import torch

            torch.set_num_threads(self.config.torch_threads)

        tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        tokenizer.truncation_side = self.config.truncation_side
        model = AutoModelForSequenceClassification.from_pretrained(self.model_dir, local_files_only=True)
        model.eval()
        index = label_index(model.config, self.config.label)
        if getattr(tokenizer, "pad_token", None) is None and not self.config.exact:
            tokenizer.pad_token = tokenizer.eos_token
        return LoadedModel(tokenizer, model, index)

    def _forward(self, loaded: LoadedModel, texts: list[str]) -> list[float]:
        import torch

        encoded = loaded.tokenizer(
            texts,
            truncation=True,
            max_length=self.config.max_length,
            padding=len(texts) > 1,
            return_tensors="pt",
        )
        with torch.no_grad():
            logits = loaded.model(**encoded).logits
        return score_logits(logits, loaded.index, self.config.output, self.config.decimals)

    def run_inference(
        self, batch: Sequence[Trajectory], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterator[PredictionResult]:
        texts = [render(t, self.config.roles) for t in batch]
        if self.config.exact:
            scores = [self._forward(model, [text])[0] for text in texts]
        else:
            scores = self._forward(model, texts)
        for trajectory, score in zip(batch, scores, strict=True):
            yield PredictionResult(example=trajectory, inference=score)

    def get_num_bytes(self, batch: Sequence[Trajectory]) -> int:
        return sum(len(t.model_dump_json()) for t in batch)

    def get_metrics_namespace(self) -> str:
        return "agentmill_score"


class FailedBatches(beam.DoFn):
    """Turns RunInference's failed batches into one dead letter per trajectory."""

    def __init__(self, step_id: str) -> None:
        self.step_id = step_id

    def start_bundle(self) -> None:
        self.acct = Accounting(self.step_id)

    def process(self, element: tuple[Any, Any]) -> Iterator[Any]:
        batch, error = element
        examples = batch if isinstance(batch, (list, tuple)) else [batch]
        for example in examples:
            self.acct.counts[(IN, "")] += 1
            detail = clip(f"{type(error).__name__}: {error}", 2_000)
            yield self.acct.rejected(DEAD_LETTER, "inference_error", detail, example)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self.acct.flush()
