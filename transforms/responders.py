"""Responders: where the plain-text answers of negative samples come from.

Normal queries (the source answered them in plain text) always keep that real answer; the
responder answers the queries that need a tool nobody gave:

- ``dataset``: answers a user supplies (config ``answers:``, JSON Lines or a JSON list of
  ``{"query", "answer"}``, matched by query text with whitespace collapsed and case folded; see
  :func:`transforms.negatives.load_answers`); without that file, the source's own plain reply
  when it declines the request (glaive).
- ``template``: composed from the phrase book of the query's language,
  ``templates/negatives/default.yaml`` (or a user's file): what is missing and help.
- ``model``: a local Hugging Face causal LM, run through Beam's RunInference
  (:class:`CausalLMHandler`), so the same step runs on Dataflow GPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from inference.generation import LoadedModel, generate_one, load_causal_lm
from schemas import Message


class CausalLMHandler(ModelHandler[list[Message], PredictionResult, LoadedModel]):
    """RunInference handler: greedy generation with a local causal LM (no network access).

    Examples are message lists; the inference is the generated text, decoded without special
    tokens. Deterministic: greedy decoding, fixed ``max_new_tokens``. The generation itself is
    :mod:`inference.generation`, which ``agentmill eval`` shares.
    """

    def __init__(self, model_path: str, max_new_tokens: int = 128, device: str = "cpu") -> None:
        self.model_path = model_path
        self.max_new_tokens = max_new_tokens
        self.device = device

    def load_model(self) -> LoadedModel:
        return load_causal_lm(self.model_path, self.device)

    def run_inference(
        self, batch: Sequence[list[Message]], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        for messages in batch:
            yield PredictionResult(messages, generate_one(model, messages, self.max_new_tokens, self.device))

    def share_model_across_processes(self) -> bool:
        return False
