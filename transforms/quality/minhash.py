"""Near-duplicate texts by MinHash and banded LSH (``datasketch``).

A text's shingles are its lowercased word ``shingle``-grams (the whole text when it is shorter),
hashed with xxHash32 (optionally over its first ``max_chars`` characters only).
Its signature is a ``datasketch.MinHash`` with a fixed seed, so signatures are the same on every
worker and run. The signature is cut into ``bands`` bands of ``rows`` values (chosen by
datasketch's optimiser for a Jaccard ``threshold``); texts that share any band are candidates,
and connected candidates form a cluster. Guarantee: clusters depend only on the texts (not on
order or worker count); each cluster's members are sorted, clusters by their first member.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import numpy as np

from transforms.quality.ngrams import word_tokens

SEED = 1


@functools.cache
def lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` that datasketch's MinHashLSH would choose for ``threshold``."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def _hash32(data: bytes) -> int:
    """xxHash32 of a shingle: C speed (datasketch's default, SHA-1, is a Python call per shingle
    into hashlib and 2x slower) and the same value in every process."""
    import xxhash

    return xxhash.xxh32_intdigest(data)


@functools.cache
def _template(num_perm: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=SEED, hashfunc=_hash32)


def shingles(text: str, size: int = 3) -> list[bytes]:
    words = word_tokens(text)
    if len(words) <= size:
        return [" ".join(words).encode("utf-8")] if words else []
    return [" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)]


def signature(text: str, num_perm: int = 64, shingle: int = 3, max_chars: int | None = None) -> np.ndarray | None:
    """MinHash values of ``text`` (uint32), or ``None`` for a text without words. With
    ``max_chars``, only the text's first ``max_chars`` characters are shingled."""
    from datasketch import MinHash

    grams = shingles(text if max_chars is None else text[:max_chars], shingle)
    if not grams:
        return None
    template = _template(num_perm)
    minhash = MinHash(
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
