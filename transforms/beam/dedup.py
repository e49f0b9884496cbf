"""The Beam side of :mod:`transforms.dedup`: the keep passes over sorted partitions."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from schemas import Sample, Trajectory
from transforms.base import EMITTED, FILTERED, IN, PASSED, STAT
from transforms.beam.records import Accounting
from transforms.coders import CODERS, SampleCoder
from transforms.dedup import NearConfig, near_text
from transforms.quality.ngrams import word_tokens


class DedupDoFn(beam.DoFn):
    """Keeps the representative of each duplicate set and filters the rest, with the ledger.

    Input: one sort partition, ``(conversation key + NUL + sample id, sample JSON)`` pairs in
    order, so each set of duplicates arrives together and in keep order."""

    def __init__(self, step_id: str, record_type: type[Sample | Trajectory] = Sample) -> None:
        self.step_id = step_id
        self.record_type = record_type

    def start_bundle(self) -> None:
        self.acct = Accounting(self.step_id)
        self.coder = CODERS[self.record_type]()

    def process(self, element: tuple[int, Iterable[tuple[bytes, bytes]]]) -> Iterator[Any]:
        _, pairs = element
        for key, members in itertools.groupby(pairs, key=lambda pair: pair[0].split(b"\0", 1)[0]):
            kept = self.coder.decode(next(members)[1])
            self.acct.counts[(IN, "")] += 1
            self.acct.counts[(PASSED, "")] += 1
            self.acct.counts[(EMITTED, "")] += 1
            yield kept
            duplicates = 0
            for _, payload in members:  # noqa: B031 (the rest of the same group, after its first)
                duplicates += 1
                self.acct.counts[(IN, "")] += 1
                detail = f"duplicate of {kept.id} (conversation key {key.decode()})"
                yield self.acct.rejected(FILTERED, "duplicate", detail, self.coder.decode(payload))
            if duplicates:
                self.acct.counts[(STAT, "duplicate_sets")] += 1

    def finish_bundle(self) -> Iterator[Any]:
        yield from self.acct.flush()


class NearDoFn(beam.DoFn):
    """Walks one sorted partition of assignments and samples: a sample whose node was assigned
    another kept node, or a repeat of a node already seen, is filtered; the rest are kept."""

    def __init__(self, step_id: str, near: NearConfig) -> None:
        self.step_id = step_id
        self.near = near

    def start_bundle(self) -> None:
        self.acct = Accounting(self.step_id)
        self.coder = SampleCoder()

    def process(self, element: tuple[int, Iterable[tuple[bytes, bytes]]]) -> Iterator[Any]:
        _, rows = element
        counts = self.acct.counts
        for node, group in itertools.groupby(rows, key=lambda row: row[0].rsplit(b"\0", 1)[0]):
            kept_node, size, seen = node, 0, False
            for key, payload in group:
                if key.endswith(b"\0A"):  # the assignment sorts before the node's samples
                    kept_text, size_text = payload.decode().split("\t")
                    kept_node, size = kept_text.encode(), int(size_text)
                    continue
                sample = self.coder.decode(payload)
                counts[(IN, "")] += 1
                if kept_node == node and not seen:
                    seen = True
                    counts[(PASSED, "")] += 1
                    counts[(EMITTED, "")] += 1
                    if size:
                        counts[(STAT, "near_clusters")] += 1
                        counts[(STAT, "near_cluster_members")] += size
                    elif not word_tokens(near_text(sample, self.near.compare)):
                        counts[(STAT, "near_no_text")] += 1
                    yield sample
                    continue
                kept_id = kept_node.split(b"\0", 1)[0].decode()
                if kept_node == node:
                    counts[(STAT, "identical_copies")] += 1
                    detail = f"near duplicate of {kept_id} (an identical copy of it)"
                else:
                    detail = (
                        f"near duplicate of {kept_id} ({self.near.compare} text; MinHash/LSH, Jaccard threshold "
                        f"{self.near.threshold}; cluster of {size})"
                    )
                yield self.acct.rejected(FILTERED, "near_duplicate", detail, sample)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self.acct.flush()
