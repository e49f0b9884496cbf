"""``near_duplicate``: near-duplicate prompts across source records (MinHash, banded LSH).

A sample's *prompt* is the request its first supervised assistant message answers: the last user
message before it that is not an elicitation turn (``part: elicit``, such as ``align``'s
"Continue.", which ``balance`` leaves in front of a target whose tool choice it took out of the
loss).
Prompts are compared by MinHash (``datasketch``, word 3-gram shingles of the first ``max_chars``
(4,000) characters, 64 permutations) with banded LSH tuned to a Jaccard ``similarity`` (0.8).
Samples of one source record (same source and source id: several derivations or deliberate
repeats of one trajectory) count once. ``count`` is the number of source records that are a
near duplicate of another one (cluster size - 1, summed); ``share = count / records``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas import Role, Sample
from transforms.quality.check import Check, Example, Finding, clip, first_supervised, record_key
from transforms.quality.minhash import band_keys, lsh_shape, signature
from transforms.quality.rows import Rows


class NearDuplicateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    similarity: float = Field(0.8, gt=0.0, lt=1.0)
    num_perm: int = Field(64, ge=16)
    #: Characters of a prompt that are shingled: a prompt's start identifies it, and long
    #: environment descriptions would cost time for nothing.
    max_chars: int = Field(4000, ge=1)


def prompt_of(sample: Sample) -> str | None:
    start = first_supervised(sample)
    if start is None:
        return None
    return next(
        (m.content for m in reversed(sample.messages[:start]) if m.role is Role.USER and m.part != "elicit"), None
    )


def _join_band(component: np.ndarray, record_index: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``component`` (record -> label) after joining the records whose rows share a key of one
    band (``keys``, one per row); labels are renumbered ``0..k-1``."""
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    same = np.flatnonzero(keys[1:] == keys[:-1])  # row order[i] and order[i + 1] share a key
    del keys
    left = component[record_index[order[same]]]
    right = component[record_index[order[same + 1]]]
    del order, same
    joins = left != right
    left, right = left[joins], right[joins]
    if not len(left):
        return component
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(component)
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
    _, merged = connected_components(graph, directed=False)
    return merged[component]


class NearDuplicate(Check):
    name = "near_duplicate"
    definition = (
        "Share of source records whose prompt (the user request before the first target) is a "
        "near duplicate (MinHash/LSH, Jaccard ~0.8 on word 3-grams) of another record's prompt."
    )
    threshold = 0.05
    severity = "warn"
    Options = NearDuplicateOptions

    def setup(self) -> None:
        signature("warm up the permutations once per worker", self.options.num_perm)  # type: ignore[attr-defined]

    def new_state(self) -> Rows:
        """One row per sample with a prompt: its record key, then its band keys; labelled with
        the sample id (on disk when the audit has a spill folder)."""
        bands, _ = lsh_shape(self.options.similarity, self.options.num_perm)  # type: ignore[attr-defined]
        return Rows(1 + bands, self.spill_dir())

    def observe(self, state: Rows, sample: Sample) -> None:
        options: NearDuplicateOptions = self.options  # type: ignore[assignment]
        prompt = prompt_of(sample)
        values = signature(prompt, options.num_perm, max_chars=options.max_chars) if prompt else None
        if values is None:
            return
        state.append([record_key(sample), *band_keys(values, options.similarity)], sample.id)

    def merge(self, state: Rows, other: Rows) -> Rows:
        return state.merge(other)

    def finish(self, state: Rows) -> Finding:
        """Connected components of the records that share a band key, merged a band at a time:
        only the edges that join two components found so far are kept, so memory holds one
        band's keys and a component label per record, not every band's edges."""
        if not len(state):
            return Finding(0, 0, 0.0)
        records, record_index = np.unique(state.column(0), return_inverse=True)
        n = len(records)
        del records
        record_index = record_index.astype(np.int64, copy=False)
        component = np.arange(n, dtype=np.int64)  # record -> its component's label
        for band in range(1, state.width):
            component = _join_band(component, record_index, state.column(band))
        sizes = np.bincount(component, minlength=n)
        duplicates = int((sizes[sizes > 1] - 1).sum())
        row_component = component[record_index]
        first_id = state.smallest_labels(row_component, sizes[row_component] > 1)  # cluster -> smallest id
        state.discard()
        largest = sorted(((-int(sizes[label]), sample_id) for label, sample_id in first_id.items()))[:5]
        examples = [Example(sample_id, hint=str(-size)) for size, sample_id in largest]
        details = {
            "records": n,
            "clusters": int((sizes > 1).sum()),
            "largest_clusters": [-size for size, _ in largest],
            "bands_rows": list(lsh_shape(self.options.similarity, self.options.num_perm)),  # type: ignore[attr-defined]
        }
        return Finding(duplicates, n, round(duplicates / n, 6), examples, details)

    def excerpt(self, sample: Sample, hint: str) -> str:
        return clip(f"cluster of {hint} records: {prompt_of(sample) or ''}")
