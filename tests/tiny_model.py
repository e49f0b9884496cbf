"""A tiny randomly initialised Llama with a local BPE tokenizer and a chat template (no downloads)."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = ["I will use the weather tool.", "Thought: call it. Action: search", "The answer is 42.", "hello world"] * 20


def tiny_llama_for(tokenizer):
    """A tiny randomly initialised Llama (seed 0) sized for ``tokenizer``, with its special ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.tiny import tiny_llama_config

    torch.manual_seed(0)
    config = tiny_llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=64,
    )
    return LlamaForCausalLM(LlamaConfig(**config))


def build_tiny_model(directory: Path) -> Path:
    from train.tiny import train_tokenizer

    tokenizer = train_tokenizer(TEXT, vocab_size=300)
    tokenizer.chat_template = CHATML
    model = tiny_llama_for(tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
