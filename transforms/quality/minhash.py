"""Near-duplicate texts by MinHash and banded LSH (``datasketch``).

A text's shingles are its lowercased word ``shingle``-grams (the whole text when it is shorter),
hashed with xxHash32 (optionally over its first ``max_chars`` characters only).
Its signature is a ``datasketch.MinHash`` with a fixed seed, so signatures are the same on every
worker and run. The signature is cut into ``bands`` bands of ``rows`` values (chosen as
datasketch's ``MinHashLSH`` chooses them for a Jaccard ``threshold``: :func:`lsh_shape`); texts
that share any band are candidates, and connected candidates form a cluster. Guarantee:
clusters depend only on the texts (not on order or worker count); each cluster's members are
sorted, clusters by their first member.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import threading
from collections.abc import Iterable

import numpy as np

from transforms.deferred_imports import StandIn, import_with_stand_ins
from transforms.quality.ngrams import word_tokens

SEED = 1


@functools.cache
def lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` that datasketch's ``MinHashLSH`` chooses for ``threshold`` (its
    ``_optimal_param`` with equal weights): of all ``bands * rows <= num_perm``, the one with the
    least false-positive plus false-negative probability mass.

    The two probabilities are integrals of the polynomial ``1 - (1 - s**rows)**bands`` of degree
    ``bands * rows <= num_perm``; Gauss-Legendre quadrature with ``num_perm // 2 + 1`` nodes is
    exact for it, so this needs no ``scipy.integrate`` (datasketch integrates with ``quad``; the
    choice is the same: ``tests/test_lean_imports.py`` compares both on a grid of thresholds
    and sizes).
    """
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def mass(low: float, high: float, bands: int, rows: int, collide: bool) -> float:
        """Integral over ``[low, high]`` of the probability that two texts of Jaccard ``s``
        share a band (``collide``) or share none."""
        half = (high - low) / 2
        shared = 1 - (1 - (half * nodes + (low + high) / 2) ** rows) ** bands
        return float(half * np.dot(weights, shared if collide else 1 - shared))

    best, shape = float("inf"), (0, 0)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive = mass(0.0, threshold, bands, rows, collide=True)
            false_negative = mass(threshold, 1.0, bands, rows, collide=False)
            error = 0.5 * false_positive + 0.5 * false_negative
            if error < best:
                best, shape = error, (bands, rows)
    return shape


def _hash32(data: bytes) -> int:
    """xxHash32 of a shingle: C speed (datasketch's default, SHA-1, is a Python call per shingle
    into hashlib and 2x slower) and the same value in every process."""
    import xxhash

    return xxhash.xxh32_intdigest(data)


_IMPORT_LOCK = threading.RLock()


@functools.cache
def _minhash_class() -> type:
    """``datasketch.MinHash``, imported without ``scipy.integrate``.

    datasketch's package imports its LSH modules, which import ``scipy.integrate`` for ``quad``
    (0.3-0.6 s here, most of a small run's audit) although MinHash never integrates. While
    datasketch imports (10-30 ms), ``scipy.integrate`` is a stand-in
    (:class:`transforms.deferred_imports.StandIn`) whose ``quad`` imports the real one on its
    first call, so datasketch's LSH classes still work unchanged; the stand-in is removed right
    after, and a later ``import scipy.integrate`` loads scipy's. Another thread that imports
    ``scipy.integrate`` in those milliseconds gets the stand-in, whose every attribute waits for
    the window to close and then comes from scipy's module. When datasketch is already imported
    there is nothing to save; when scipy.integrate is, a plain import.
    """
    if "datasketch" not in sys.modules:
        import_with_stand_ins("datasketch", {"scipy.integrate": _stand_in()}, _IMPORT_LOCK)
    from datasketch import MinHash

    return MinHash


def _stand_in() -> StandIn:
    """A ``scipy.integrate`` that imports scipy's when used."""
    return StandIn("scipy.integrate", _IMPORT_LOCK, functions=["quad"])


@functools.cache
def _template(num_perm: int):
    return _minhash_class()(num_perm=num_perm, seed=SEED, hashfunc=_hash32)


def shingles(text: str, size: int = 3) -> list[bytes]:
    words = word_tokens(text)
    if len(words) <= size:
        return [" ".join(words).encode("utf-8")] if words else []
    return [" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)]


def signature(text: str, num_perm: int = 64, shingle: int = 3, max_chars: int | None = None) -> np.ndarray | None:
    """MinHash values of ``text`` (uint32), or ``None`` for a text without words. With
    ``max_chars``, only the text's first ``max_chars`` characters are shingled."""
    grams = shingles(text if max_chars is None else text[:max_chars], shingle)
    if not grams:
        return None
    template = _template(num_perm)
    minhash = _minhash_class()(
        num_perm=num_perm, seed=SEED, hashfunc=_hash32, permutations=template.permutations, scheme=template.scheme
    )
    minhash.update_batch(grams)
    return minhash.hashvalues.astype(np.uint32)


def band_keys(values: np.ndarray, threshold: float = 0.8) -> list[int]:
    """One 64-bit key per band (band index mixed in), stable across processes."""
    bands, rows = lsh_shape(threshold, len(values))
    keys = []
    for band in range(bands):
        chunk = values[band * rows : (band + 1) * rows].tobytes()
        digest = hashlib.blake2b(chunk, digest_size=8, person=band.to_bytes(2, "little") + b"am").digest()
        keys.append(int.from_bytes(digest, "little"))
    return keys


def clusters(band_keys_of: Iterable[tuple[str, list[int]]]) -> list[list[str]]:
    """Clusters (of size >= 2) of record ids that share a band key, transitively."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_of_key: dict[int, str] = {}
    for record_id, keys in band_keys_of:
        parent.setdefault(record_id, record_id)
        for key in keys:
            other = first_of_key.setdefault(key, record_id)
            if other != record_id:
                a, b = find(other), find(record_id)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[str, list[str]] = {}
    for record_id in parent:
        groups.setdefault(find(record_id), []).append(record_id)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])
