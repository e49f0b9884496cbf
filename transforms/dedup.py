"""Step ``dedup``: Sample -> Sample, exact duplicates (``mode: exact``) or near duplicates
(``mode: near``) removed; step ``dedup_trajectories``: Trajectory -> Trajectory, exact duplicates
removed before a trajectory fans out into several derivations.

Exact mode. Two samples are duplicates when their normalised conversations are equal: the same roles and
texts (and tool calls) in the same order, after collapsing whitespace and, by default,
lowercasing; system messages are ignored by default (a pipeline often adds the same one to
everything). Of each set of duplicates exactly one sample is kept: the one with the smallest
id (ties between equal ids are broken by the sample's JSON), so the choice does not depend on
arrival order, runner or worker count. The others are filtered as ``duplicate``, with the kept
id in the detail. Kept samples are unchanged. Stat ``duplicate_sets`` counts sets with more
than one member.

Near mode. Each sample's text (``near.compare``: the first user message, all user messages, or the
whole conversation without system messages) gets a MinHash signature and banded LSH keys
(:mod:`transforms.quality.minhash`, ``datasketch`` underneath, fixed seed); samples that share
a band key are candidates, and connected candidates form a cluster (a global pass over
``(sample, band keys)`` pairs; the records themselves wait on disk). Of each cluster exactly one
sample is kept: the smallest ``(id, content digest)``, so the choice depends only on the data.
The others are filtered as ``near_duplicate``, the kept id and the cluster size in the detail.
Identical copies of one record are near duplicates of it. A sample whose compared text has no
word passes unclustered (stat ``near_no_text``). Stats: ``near_clusters`` (clusters that lost
members), ``near_cluster_members`` (their members, kept ones included).

Trajectories (``dedup_trajectories``, exact mode only). The same key over the trajectory's turns
(role, text and calls; system turns ignored by default), so a source that holds the same
conversation twice under two ids (glaive's demo files: 58 of 454 records) gives one trajectory,
before ``align``, ``instruction_pairs`` and ``negatives`` each derive their own samples from it: a
count-based step downstream then meets its quota with distinct conversations.

Guarantees of both modes: every input is kept or filtered (nothing else); kept samples are
unchanged; results do not depend on arrival order, runner or worker count; memory stays flat
in the records (they are sorted on disk, :class:`transforms.spill.SortedGroups`).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import Role, Sample, Trajectory, content_hash
from transforms.base import LEDGER, MAIN, REJECTED, Step, StepConfig
from transforms.quality import minhash

if TYPE_CHECKING:
    import apache_beam as beam

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


class NearConfig(BaseModel):
    """Near-duplicate settings (``mode: near``)."""

    model_config = ConfigDict(extra="forbid")

    compare: Literal["first_user", "user", "conversation"] = "first_user"
    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    num_perm: int = Field(128, ge=16, le=1024)
    shingle: int = Field(3, ge=1)


class DedupConfig(StepConfig):
    mode: Literal["exact", "near"] = "exact"
    lowercase: bool = True
    ignore_system: bool = True
    strip_punctuation: bool = False
    include_tool_calls: bool = True
    near: NearConfig = Field(default_factory=NearConfig)

    @model_validator(mode="after")
    def _near_only_in_near_mode(self) -> DedupConfig:
        if self.mode == "exact" and "near" in self.model_fields_set:
            raise ValueError("'near' settings need mode: near")
        return self


def normalise(text: str, config: DedupConfig) -> str:
    """``text`` with whitespace collapsed (and lowercased / punctuation removed if configured)."""
    if config.lowercase:
        text = text.lower()
    if config.strip_punctuation:
        text = _PUNCTUATION.sub(" ", text)
    return " ".join(text.split())


def dedup_key(record: Sample | Trajectory, config: DedupConfig) -> str:
    """The hash of the record's normalised conversation (a sample's messages, a trajectory's
    turns); equal keys mean duplicates."""
    parts = []
    turns = record.messages if isinstance(record, Sample) else record.turns
    for turn in turns:
        if config.ignore_system and turn.role is Role.SYSTEM:
            continue
        text = turn.content if isinstance(record, Sample) else turn.text  # type: ignore[union-attr]
        part: list[Any] = [turn.role.value, normalise(text, config)]
        if config.include_tool_calls and turn.tool_calls:  # names and arguments, not ids
            part.append([c.model_dump(mode="json", exclude={"id"}) for c in turn.tool_calls])
        parts.append(part)
    return content_hash(parts)


DEDUP_PARTITIONS = 16  # sort partitions (parallelism of the keep pass); does not change results


def sort_pair(record: Sample | Trajectory, config: DedupConfig) -> tuple[int, tuple[bytes, bytes]]:
    """``(partition, (conversation key + NUL + id, record JSON))``: sorted, duplicates come
    together and in keep order (smallest id, then smallest JSON, first)."""
    key = dedup_key(record, config)
    partition = int(key[:8], 16) % DEDUP_PARTITIONS
    return partition, (f"{key}\0{record.id}".encode(), record.model_dump_json().encode("utf-8"))


# --- near mode --------------------------------------------------------------------------------


def near_text(sample: Sample, compare: str) -> str:
    """The text near mode compares: the first user message, all user messages, or every
    non-system message (tool calls included as JSON), joined by newlines."""
    if compare == "first_user":
        return next((m.content for m in sample.messages if m.role is Role.USER), "")
    parts = []
    for message in sample.messages:
        if message.role is Role.SYSTEM or (compare == "user" and message.role is not Role.USER):
            continue
        parts.append(message.content)
        if compare == "conversation":
            parts += [c.model_dump_json(exclude={"id"}) for c in message.tool_calls]
    return "\n".join(parts)


def node_key(sample: Sample, payload: bytes) -> bytes:
    """The sample's place in the keep order: id, NUL, a digest of its JSON (identical copies
    share it)."""
    return sample.id.encode() + b"\0" + hashlib.sha256(payload).hexdigest()[:16].encode()


def near_keys(sample: Sample, near: NearConfig) -> tuple[bytes, bytes]:
    """``(node key, LSH band keys packed as 8-byte integers)``; no band key for a text
    without words."""
    payload = sample.model_dump_json().encode("utf-8")
    values = minhash.signature(near_text(sample, near.compare), near.num_perm, near.shingle)
    keys = [] if values is None else minhash.band_keys(values, near.threshold)
    return node_key(sample, payload), b"".join(key.to_bytes(8, "little") for key in keys)


def _unpack(keys: bytes) -> list[int]:
    return [int.from_bytes(keys[i : i + 8], "little") for i in range(0, len(keys), 8)]


def _partition(node: bytes) -> int:
    return int(hashlib.sha256(node).hexdigest()[:8], 16) % DEDUP_PARTITIONS


def cluster_assignments(pairs: list[tuple[bytes, bytes]]) -> Iterator[tuple[int, tuple[bytes, bytes]]]:
    """Join rows ``(partition, (node + NUL + "A", kept node + TAB + cluster size))`` for every
    member of a cluster of size >= 2 (the kept member, the smallest node, included)."""
    by_name = {node.decode(): node for node, _ in pairs}
    for members in minhash.clusters((node.decode(), _unpack(keys)) for node, keys in pairs if keys):
        kept = min(members)
        row = f"{kept}\t{len(members)}".encode()
        for member in members:
            yield _partition(by_name[member]), (by_name[member] + b"\0A", row)


def near_sort_pair(sample: Sample) -> tuple[int, tuple[bytes, bytes]]:
    """Join row of a sample: ``(partition, (node + NUL + "B", sample JSON))``; sorted, it comes
    right after its node's assignment (if any), identical copies together."""
    payload = sample.model_dump_json().encode("utf-8")
    node = node_key(sample, payload)
    return _partition(node), (node + b"\0B", payload)


class Dedup(Step):
    """Removes exact duplicate conversations (or near-duplicate texts with ``mode: near``),
    keeping the smallest id of each set."""

    type_name = "dedup"
    config_model = DedupConfig
    input_type = Sample
    output_type = Sample

    def expand(self, samples: beam.PCollection) -> dict[str, Any]:
        config: DedupConfig = self.config  # type: ignore[assignment]
        if config.mode == "near":
            return self._expand_near(samples, config.near)
        return self._expand_exact(samples, config, Sample)

    def _expand_exact(self, records: beam.PCollection, config: DedupConfig, record_type: type) -> dict[str, Any]:
        import apache_beam as beam

        from transforms.beam.dedup import DedupDoFn
        from transforms.spill import SortedGroups

        outputs = (
            records
            | "Key" >> beam.Map(sort_pair, config)
            | "Sort" >> SortedGroups(self.context.spill_dir("sort"))
            | "Keep" >> beam.ParDo(DedupDoFn(self.step_id, record_type)).with_outputs(REJECTED, LEDGER, main=MAIN)
        )
        return self._typed(outputs)

    def _expand_near(self, samples: beam.PCollection, near: NearConfig) -> dict[str, Any]:
        """Cluster on ``(node, band keys)`` pairs in one global pass; join the assignments with
        the samples in an external sort (the samples wait on disk, not in memory)."""
        import apache_beam as beam

        from transforms.beam.dedup import NearDoFn
        from transforms.spill import SortedGroups

        assignments = (
            samples
            | "BandKeys" >> beam.Map(near_keys, near)
            | "AllKeys" >> beam.combiners.ToList()
            | "Cluster" >> beam.FlatMap(cluster_assignments)
        )
        rows = samples | "JoinRows" >> beam.Map(near_sort_pair)
        outputs = (
            (assignments, rows)
            | "Sort" >> SortedGroups(self.context.spill_dir("near"))
            | "Keep" >> beam.ParDo(NearDoFn(self.step_id, near)).with_outputs(REJECTED, LEDGER, main=MAIN)
        )
        return self._typed(outputs)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        assert isinstance(config, DedupConfig)
        if config.mode == "near":
            removed = ledger.filtered.get("near_duplicate", 0)
            bands, rows = minhash.lsh_shape(config.near.threshold, config.near.num_perm)
            return {
                "mode": "near",
                "compare": config.near.compare,
                "threshold": config.near.threshold,
                "num_perm": config.near.num_perm,
                "bands": bands,
                "rows": rows,
                "in": ledger.in_,
                "kept": ledger.passed,
                "near_duplicates": removed,
                "near_duplicate_share": round(removed / ledger.in_, 6) if ledger.in_ else None,
                "clusters": ledger.stats.get("near_clusters", 0),
                "cluster_members": ledger.stats.get("near_cluster_members", 0),
                "identical_copies": ledger.stats.get("identical_copies", 0),
                "no_text": ledger.stats.get("near_no_text", 0),
            }
        duplicates = ledger.filtered.get("duplicate", 0)
        return {
            "in": ledger.in_,
            "kept": ledger.passed,
            "duplicates": duplicates,
            "duplicate_share": round(duplicates / ledger.in_, 6) if ledger.in_ else None,
            "duplicate_sets": ledger.stats.get("duplicate_sets", 0),
        }


class TrajectoryDedupConfig(DedupConfig):
    """Config of ``dedup_trajectories``: the exact mode's keys (near mode is for samples)."""

    @model_validator(mode="after")
    def _exact_only(self) -> TrajectoryDedupConfig:
        if self.mode != "exact":
            raise ValueError("dedup_trajectories removes exact duplicates only (mode: exact)")
        return self


class DedupTrajectories(Dedup):
    """Removes exact duplicate trajectories (the same turns under another id), keeping the
    smallest id of each set, before they fan out into derivations."""

    type_name = "dedup_trajectories"
    config_model = TrajectoryDedupConfig
    input_type = Trajectory
    output_type = Trajectory

    def expand(self, trajectories: beam.PCollection) -> dict[str, Any]:
        return self._expand_exact(trajectories, self.config, Trajectory)  # type: ignore[arg-type]


__all__ = [
    "Dedup",
    "DedupConfig",
    "DedupTrajectories",
    "NearConfig",
    "TrajectoryDedupConfig",
    "cluster_assignments",
    "dedup_key",
    "near_keys",
    "near_sort_pair",
    "near_text",
    "normalise",
    "sort_pair",
]
