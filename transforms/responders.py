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

from schemas import Message, Role


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """Chat-template text of ``messages`` ending with the assistant's turn to speak."""
    chat = [{"role": m.role.value if m.role is not Role.TOOL else "user", "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in chat]
    return "\n".join([*lines, "assistant:"])


class LoadedModel:
    """A model and its tokenizer (a class, since RunInference keeps a weak reference to it)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer


class CausalLMHandler(ModelHandler[list[Message], PredictionResult, LoadedModel]):
    """RunInference handler: greedy generation with a local causal LM (no network access).

    Examples are message lists; the inference is the generated text, decoded without special
    tokens. Deterministic: greedy decoding, fixed ``max_new_tokens``.
    """

    def __init__(self, model_path: str, max_new_tokens: int = 128, device: str = "cpu") -> None:
        self.model_path = model_path
        self.max_new_tokens = max_new_tokens
        self.device = device

    def load_model(self) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True).to(self.device).eval()
        return LoadedModel(model, tokenizer)

    def run_inference(
        self, batch: Sequence[list[Message]], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        import torch

        lm, tokenizer = model.model, model.tokenizer
        for messages in batch:
            prompt = render_prompt(tokenizer, messages)
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
            with torch.no_grad():
                output = lm.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id
                    if tokenizer.pad_token_id is not None
                    else tokenizer.eos_token_id,
                )
            text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            yield PredictionResult(messages, text.strip())

    def share_model_across_processes(self) -> bool:
        return False


def generate_texts(handler: CausalLMHandler, prompts: Sequence[list[Message]]) -> list[str]:
    """The handler's answers without Beam (used by the evaluation command)."""
    model = handler.load_model()
    return [result.inference for result in handler.run_inference(prompts, model)]
