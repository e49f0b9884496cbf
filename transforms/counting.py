"""Token counters for statistics: whitespace words (default), UTF-8 bytes, or a local
Hugging Face tokenizer. Counters are picklable; a tokenizer is loaded on first use per worker."""

from __future__ import annotations

from typing import Any, Literal

CounterName = Literal["whitespace", "bytes", "tokenizer"]


class TokenCounter:
    """``counter(text) -> int`` in the chosen unit."""

    def __init__(self, kind: CounterName = "whitespace", tokenizer: str | None = None) -> None:
        if kind == "tokenizer" and not tokenizer:
            raise ValueError("counter 'tokenizer' needs 'tokenizer': a local path or a cached model name")
        self.kind = kind
        self.tokenizer_name = tokenizer
        self._tokenizer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    def _load(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name, local_files_only=True)
        return self._tokenizer

    def __call__(self, text: str) -> int:
        if self.kind == "whitespace":
            return len(text.split())
        if self.kind == "bytes":
            return len(text.encode("utf-8"))
        return len(self._load()(text, add_special_tokens=False)["input_ids"])
