"""Tiny local tokenizer and Llama config for tests, benchmarks and ``make demo`` (no downloads).

``python -m train.tiny --data out/demo --out DIR`` writes ``DIR/tokenizer`` (a byte-level BPE trained
on the shards' text, with ``<s>``, ``</s>``, ``<unk>``, ``<pad>``, ``<|im_start|>``, ``<|im_end|>``)
and ``DIR/model_config.json`` (a random-init Llama-architecture config sized to that vocabulary).
Deterministic: the same text gives the same tokenizer.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
# Text every chat template emits, so the tokenizer has merges for it (byte-level covers any byte anyway).
TEMPLATE_TEXT = [
    "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\n [/INST]",
    "<|Human|>\u0d46 hello\n <|Assistant|>\u0d46 hi\u0d3f\n ",
    "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n",
]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (no BOS/EOS auto-added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*TEMPLATE_TEXT, *texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=1 << 20,
    )


def shard_texts(data_dirs: Iterable[str]) -> list[str]:
    """Every message's content in the shards under ``data_dirs`` (in order)."""
    import datasets

    texts: list[str] = []
    for data_dir in data_dirs:
        for row in datasets.load_from_disk(str(data_dir)):
            texts.extend(m["content"] for m in row["messages"])
    return texts


def tiny_llama_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """A small Llama config (GQA, 2 layers) as a ``config.json``-style dict."""
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
    }
    config.update(overrides)
    return config


def build(data_dirs: list[str], out: str, vocab_size: int = 512, **config_overrides: Any) -> tuple[Path, Path]:
    """Write ``out/tokenizer`` and ``out/model_config.json``; return both paths."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(shard_texts(data_dirs), vocab_size=vocab_size)
    tok_dir = out_dir / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    config = tiny_llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_overrides,
    )
    config_path = out_dir / "model_config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return tok_dir, config_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["out/demo"], help="pipeline output dirs")
    parser.add_argument("--out", required=True, help="directory for tokenizer/ and model_config.json")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)
    tok_dir, config_path = build(
        args.data,
        args.out,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.layers,
    )
    print(f"tokenizer: {tok_dir}\nmodel config: {config_path}")


if __name__ == "__main__":
    main()
