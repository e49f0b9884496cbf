"""Greedy generation with a local Hugging Face causal LM, shared by the ``negatives`` step's
``model`` responder (wrapped in a Beam ``ModelHandler`` in :mod:`transforms.responders`) and by
``agentmill eval`` (:mod:`evals.hallucination`).

Guarantees: no network (``local_files_only``), deterministic output (greedy decoding, a fixed
``max_new_tokens``), and the same prompt text for the same messages in both callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import Message, Role


def render_prompt(tokenizer: Any, messages: Sequence[Message]) -> str:
    """Chat-template text of ``messages`` ending with the assistant's turn to speak.

    Tool results are given to the template as user turns (most templates know no ``tool`` role);
    a tokenizer without a chat template gets ``role: content`` lines.
    """
    chat = [{"role": m.role.value if m.role is not Role.TOOL else "user", "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in chat]
    return "\n".join([*lines, "assistant:"])


class LoadedModel:
    """A model and its tokenizer (a class, since Beam's RunInference keeps a weak reference to it)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer


def load_causal_lm(model_path: str, device: str = "cpu") -> LoadedModel:
    """The model and tokenizer of a local directory, in eval mode on ``device`` (never downloads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True).to(device).eval()
    return LoadedModel(model, tokenizer)


def generate_one(loaded: LoadedModel, messages: Sequence[Message], max_new_tokens: int, device: str = "cpu") -> str:
    """The greedy answer to ``messages``, decoded without special tokens and stripped."""
    import torch

    lm, tokenizer = loaded.model, loaded.tokenizer
    prompt = render_prompt(tokenizer, messages)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        output = lm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def generate_texts(
    model_path: str, prompts: Sequence[Sequence[Message]], max_new_tokens: int = 128, device: str = "cpu"
) -> list[str]:
    """Greedy answers of the local model at ``model_path`` to every prompt, in order."""
    loaded = load_causal_lm(model_path, device)
    return [generate_one(loaded, messages, max_new_tokens, device) for messages in prompts]
