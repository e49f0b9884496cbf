"""Deterministic sampling helpers: every decision is a function of (seed, step id, key).

No RNG state anywhere. A *keyed hash* of ``(seed, step_id, key)`` stands in for a random draw:
compare :func:`keyed_fraction` with a probability for Bernoulli sampling, or sort by
:func:`rank_key` and take a prefix for exact quotas ("count, then select"). The same inputs give
the same decisions on every runner, worker count and Python process (no ``hash()`` salting).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TypeVar

_SCALE = float(1 << 64)

T = TypeVar("T")

#: A position in a keyed ranking: ``(keyed hash, key)``; the key breaks (astronomically rare) ties.
RankKey = tuple[int, str]


def keyed_hash(seed: int, step_id: str, key: str) -> int:
    """A 64-bit unsigned integer hash of ``(seed, step_id, key)`` (BLAKE2b, length-prefixed parts)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (str(int(seed)), step_id, key):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return int.from_bytes(digest.digest(), "big")


def keyed_fraction(seed: int, step_id: str, key: str) -> float:
    """A number in ``[0, 1)`` uniformly spread over keys; ``keyed_fraction(...) < p`` keeps a
    share ``p`` of the keys, and the kept set for ``p`` contains the kept set for any ``p' < p``."""
    return keyed_hash(seed, step_id, key) / _SCALE


def keep_fraction(seed: int, step_id: str, key: str, probability: float) -> bool:
    """Bernoulli(``probability``) decision for ``key``, stable across runs."""
    return keyed_fraction(seed, step_id, key) < probability


def rank_key(seed: int, step_id: str, key: str) -> RankKey:
    """Sort key of ``key`` in the step's deterministic random order."""
    return (keyed_hash(seed, step_id, key), key)


def prefix_threshold(
    ranked: Iterable[tuple[RankKey, float]], target: float, presorted: bool = False
) -> tuple[RankKey | None, float]:
    """Select a prefix of items in rank order whose summed weight is nearest to ``target``.

    ``ranked`` holds ``(rank key, weight)`` pairs in any order; weights are non-negative (1 per
    item for a count quota, tokens for a token quota). Items are taken in rank order while
    taking the next one brings the total no further from ``target`` than stopping (ties go to
    taking it). Returns ``(threshold, total)``: an item is selected iff its rank key is
    ``<= threshold`` (``None`` selects nothing), and the selected weight.
    """
    threshold: RankKey | None = None
    total = 0.0
    if target <= 0:
        return None, 0.0
    for key, weight in ranked if presorted else sorted(ranked):
        if total + weight / 2.0 > target:
            break
        threshold = key
        total += weight
    return threshold, total


def rank_bytes(key: RankKey) -> bytes:
    """``key`` as bytes that sort like the key (a fixed-width hash, then the UTF-8 text)."""
    return key[0].to_bytes(8, "big") + key[1].encode("utf-8")


def rank_from_bytes(data: bytes) -> RankKey:
    """Inverse of :func:`rank_bytes`."""
    return int.from_bytes(data[:8], "big"), data[8:].decode("utf-8")


def take_by_rank(items: Iterable[T], seed: int, step_id: str, k: int, key_of=str) -> list[T]:
    """The ``k`` items that come first in the keyed order of ``key_of(item)`` (exact quota)."""
    ranked = sorted(items, key=lambda item: rank_key(seed, step_id, key_of(item)))
    return ranked[: max(0, k)]
