"""Evaluation-side n-gram coverage: how much of an evaluation item a training text contains.

AgentTuning's decontamination rule counts 10-gram matches. Measured over the *training* text, a
benchmark question hidden in a long conversation covers a small share of it and passes as
clean; measured over the *evaluation item* (the share of the item's distinct n-grams that occur
in the training text) the same question is fully covered. :class:`EvalIndex` measures that.

Tokens are lowercased runs of word characters (punctuation and spacing do not break a match).
An item shorter than ``n`` tokens but at least ``min_tokens`` long is one n-gram of its own
length (matched as a whole); a shorter one is not indexed (``skipped``). Guarantee: shares are
exact (no sampling); hashes are Python's, so an index is only compared with texts in the process
that built it.

:meth:`EvalIndex.measure` also gives the *training-side* figure of the same texts in the same
pass (the share of the training tokens that lie inside an ``n``-gram of some item), so a step
can report both directions from one index.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

_WORD = re.compile(r"\w+")
#: Each ASCII byte that is not a word character (``\w``: letters, digits, underscore) to a
#: space: on ASCII text, ``bytes.translate`` then ``split`` gives the runs of ``\w`` at C speed.
_ASCII_NON_WORD = bytes(c if chr(c).isalnum() or c == ord("_") else ord(" ") for c in range(128)) + bytes(128)


def word_tokens(text: str) -> list[str]:
    r"""Lowercased runs of word characters (``\w+``; ASCII text takes a faster path to the same
    list)."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered.encode("ascii").translate(_ASCII_NON_WORD).decode("ascii").split()
    return _WORD.findall(lowered)


def gram_hashes(words: list[str], n: int) -> Iterator[int]:
    for i in range(len(words) - n + 1):
        yield hash(tuple(words[i : i + n]))


@dataclass(frozen=True)
class ItemMatch:
    """One evaluation item found in a text: its set, key, share of its n-grams covered, and
    (``grams``) how many distinct n-grams the item has."""

    eval_set: str
    item: str
    share: float
    text: str
    grams: int = 0


@dataclass(frozen=True)
class Measurement:
    """Both directions of one training text against an index (see :meth:`EvalIndex.measure`).

    ``matches``: items with a covered share >= the asked minimum, best first, then by index;
    ``covered`` / ``tokens``: training tokens inside an ``n``-gram of some item / all tokens;
    ``covered_sets``: the evaluation sets whose ``n``-grams covered them, sorted."""

    matches: list[ItemMatch]
    covered: int
    tokens: int
    covered_sets: list[str]

    @property
    def training_share(self) -> float:
        return self.covered / self.tokens if self.tokens else 0.0


@dataclass
class EvalIndex:
    """Distinct n-grams of each evaluation item, looked up from training texts."""

    n: int = 10
    min_tokens: int = 6
    items: list[tuple[str, str, str]] = field(default_factory=list)  # (set, key, text)
    sizes: list[int] = field(default_factory=list)  # distinct grams per item
    lengths: list[int] = field(default_factory=list)  # gram length per item (n, or shorter)
    postings: dict[int, list[int]] = field(default_factory=dict)  # gram hash -> item indexes
    skipped: dict[str, int] = field(default_factory=dict)
    vocabulary: set[str] = field(default_factory=set)  # the words of the indexed items
    pairs: set[tuple[str, str]] = field(default_factory=set)  # words side by side in an item

    def add(self, eval_set: str, key: str, text: str) -> bool:
        """Index one item; ``False`` (and counted in ``skipped``) when it is too short."""
        words = word_tokens(text)
        if len(words) < self.min_tokens:
            self.skipped[eval_set] = self.skipped.get(eval_set, 0) + 1
            return False
        length = min(self.n, len(words))
        grams = set(gram_hashes(words, length))
        self.vocabulary.update(words)
        self.pairs.update(pairwise(words))
        index = len(self.items)
        self.items.append((eval_set, key, text))
        self.sizes.append(len(grams))
        self.lengths.append(length)
        for gram in grams:
            self.postings.setdefault(gram, []).append(index)
        return True

    def __len__(self) -> int:
        return len(self.items)

    def _separator(self) -> str:
        """Text between two joined texts: a line with a word no item has (underscores)."""
        word = "_"
        while word in self.vocabulary:
            word += "_"
        return f"\n{word}\n"

    def _paired(self, words: list[str], start: int, end: int, shortest: int) -> Iterator[tuple[int, int]]:
        """The longest spans of ``words[start:end]``, ``shortest`` words or more, in which every
        two neighbours stand side by side in some item (as every two in an item's n-gram do)."""
        low = start
        for i in range(start, end - 1):
            if (words[i], words[i + 1]) not in self.pairs:
                if i + 1 - low >= shortest:
                    yield low, i + 1
                low = i + 1
        if end - low >= shortest:
            yield low, end

    def item_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for eval_set, _, _ in self.items:
            counts[eval_set] = counts.get(eval_set, 0) + 1
        return counts

    def matches(self, texts: Iterable[str], min_share: float) -> list[ItemMatch]:
        """Items whose covered share in ``texts`` (taken together, n-grams never span two
        texts) is at least ``min_share`` (> 0), best first, then by index."""
        return self.measure(texts, min_share).matches

    def measure(self, texts: Iterable[str], min_share: float) -> Measurement:
        """Both directions in one pass over ``texts`` (n-grams never span two texts):
        evaluation-side matches as :meth:`matches` gives them, and the training-side coverage
        (tokens of ``texts`` inside an ``n``-gram of some item; items shorter than ``n`` cannot
        cover training tokens, as in the paper's rule)."""
        n = self.n
        lengths = sorted(set(self.lengths))
        texts = list(texts)
        # One pass over the texts joined by a word that no item has: no run of the items' words,
        # so no n-gram, spans two texts, and each separator is one token not counted in ``total``.
        words = word_tokens(self._separator().join(texts))
        total = len(words) - max(0, len(texts) - 1)
        seen: set[int] = set()
        covering: set[int] = set()
        covered: bytearray | None = None
        if lengths and len(words) >= lengths[0]:
            shortest = re.compile(b"\x01{%d,}" % lengths[0])
            # An n-gram of an item has only the items' words, side by side as in some item: look
            # only at runs of such words long enough to hold one (found at C speed), not at every
            # position of the text.
            for run in shortest.finditer(bytes(map(self.vocabulary.__contains__, words))):
                for start, end in self._paired(words, *run.span(), lengths[0]):
                    segment = words[start:end]
                    for length in lengths:
                        for i, gram in enumerate(gram_hashes(segment, length), start):
                            if gram in self.postings:
                                seen.add(gram)
                                if length == n:
                                    if covered is None:
                                        covered = bytearray(len(words))
                                    covered[i : i + n] = b"\x01" * n
                                    covering.add(gram)
        covered_total = sum(covered) if covered is not None else 0
        sets = sorted({self.items[index][0] for gram in covering for index in self.postings[gram]})
        if not seen:
            return Measurement([], covered_total, total, sets)
        hits: dict[int, int] = {}
        for gram in seen:
            for index in self.postings[gram]:
                hits[index] = hits.get(index, 0) + 1
        found = []
        for index, count in hits.items():
            share = count / self.sizes[index]
            if share >= min_share:
                eval_set, key, text = self.items[index]
                found.append((-share, index, ItemMatch(eval_set, key, round(share, 6), text, self.sizes[index])))
        found.sort(key=lambda t: (t[0], t[1]))
        return Measurement([match for _, _, match in found], covered_total, total, sets)
