"""The Beam side of :mod:`transforms.negatives`: the draw of each cell's smallest rank keys."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

import apache_beam as beam


class SmallestPerLabel(beam.CombineFn):
    """Each label's ``limits[label]`` smallest ranked keys, from ``(label, ranked key)`` pairs
    of any number of inputs: ``{label: keys in ascending order}``, labels sorted, a label without
    keys left out. Inputs are buffered per label and cut to the limit whenever the buffer holds
    twice as many (amortised O(log limit) per input); any merge order gives the same result."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = limits

    def create_accumulator(self) -> dict[str, list[Any]]:
        return {}

    def add_input(self, accumulator: dict[str, list[Any]], element: tuple[str, Any]) -> dict[str, list[Any]]:
        label, ranked = element
        keys = accumulator.setdefault(label, [])
        keys.append(ranked)
        if len(keys) >= 2 * self.limits[label] + 64:
            accumulator[label] = heapq.nsmallest(self.limits[label], keys)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[dict[str, list[Any]]]) -> dict[str, list[Any]]:
        merged: dict[str, list[Any]] = {}
        for accumulator in accumulators:
            for label, keys in accumulator.items():
                merged.setdefault(label, []).extend(keys)
        return {label: heapq.nsmallest(self.limits[label], keys) for label, keys in merged.items()}

    def compact(self, accumulator: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return self.merge_accumulators([accumulator])

    def extract_output(self, accumulator: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {label: heapq.nsmallest(self.limits[label], accumulator[label]) for label in sorted(accumulator)}
