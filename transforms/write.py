"""Step ``write``: Samples -> Arrow IPC stream shards in the ``datasets.load_from_disk`` layout.

Guarantees: shard membership is a hash of the sample id and rows inside a shard are sorted by
id, so the same samples give byte-identical shards on every runner and worker count. The number
of shards is ``num_shards`` or ``ceil(rows / rows_per_shard)``. Rows are sorted into shards
with an external merge sort when the run spills (:mod:`transforms.spill`), so memory does not
grow with the data; a fixed ``num_shards`` saves the pass that waits for the count. The step
reports the token, supervised-token and per-kind counts as ledger stats. Publishing (state.json, dataset_info.json,
manifest) is done by the runner once the pipeline has finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from pydantic import Field

from schemas import ArrowCodec, Sample, ShardInfo
from schemas.hf_features import features_dict
from transforms.base import LEDGER, MAIN, REJECTED, RecordDoFn, RecordError, Stat, Step, StepConfig
from transforms.batching import record_batch
from transforms.spill import Merge, SortedGroups

SAMPLE_CODEC = ArrowCodec(Sample)
KeyedRow = tuple[str, bytes]
#: Extra entry of the step's result: its encoded rows once they wait behind a barrier on disk
#: (``None`` with a fixed ``num_shards``), for the audit's excerpt pass to read.
AUDIT_ROWS = "__audit_rows__"


class WriteConfig(StepConfig):
    num_shards: int | None = Field(None, ge=1)
    rows_per_shard: int = Field(50_000, ge=1)
    batch_rows: int = Field(1_000, ge=1)


def shard_filename(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.arrow"


def shard_of(sample_id: str, num_shards: int) -> int:
    """Shard index of a sample: a hash of its id, independent of runner and worker count."""
    return int(hashlib.sha256(sample_id.encode("utf-8")).hexdigest()[:16], 16) % num_shards


def features_metadata(schema: pa.Schema) -> dict[str, str]:
    """The ``huggingface`` schema metadata ``datasets`` puts on its own Arrow files (written
    without importing ``datasets``: :mod:`schemas.hf_features`)."""
    return {"huggingface": json.dumps({"info": {"features": features_dict(schema)}})}


def shard_schema() -> pa.Schema:
    return SAMPLE_CODEC.schema.with_metadata(features_metadata(SAMPLE_CODEC.schema))


class _HashingSink:
    """A write-only file object that also hashes and counts what passes through."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.digest.update(data)
        self.size += len(data)
        self.handle.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def write_shard(path: str, rows: Iterable[bytes], schema: pa.Schema, batch_rows: int) -> ShardInfo:
    """Write JSON-encoded Arrow rows as one IPC stream file; return its size, hash and count."""
    count = 0
    with FileSystems.create(path) as handle:
        sink = _HashingSink(handle)
        with pa.ipc.new_stream(sink, schema) as writer:
            batch: list[bytes] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_rows:
                    writer.write_batch(record_batch(batch, schema))
                    count += len(batch)
                    batch = []
            if batch:
                writer.write_batch(record_batch(batch, schema))
                count += len(batch)
    return ShardInfo(filename=posixpath.basename(path), rows=count, bytes=sink.size, sha256=sink.digest.hexdigest())


class EncodeRow:
    """``Sample -> (id, JSON of its Arrow row)`` plus token and kind statistics."""

    def __call__(self, sample: Sample) -> Iterator[Any]:
        row = SAMPLE_CODEC.to_row(sample)
        try:
            encoded = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordError("invalid_unicode", f"text that is not valid Unicode: {exc.reason}") from None
        yield (sample.id, encoded)
        yield Stat("tokens", sample.counts.tokens)
        yield Stat("supervised_tokens", sample.counts.supervised_tokens)
        yield Stat(f"kind:{sample.kind}", 1)


class WriteShards(beam.DoFn):
    """Writes one shard from ``(index, [(id, row), ...])`` sorted by (id, row)."""

    def __init__(self, output_dir: str, schema: pa.Schema, batch_rows: int) -> None:
        self.output_dir = output_dir
        self.schema_bytes = schema.serialize().to_pybytes()
        self.batch_rows = batch_rows

    def setup(self) -> None:
        self.schema = pa.ipc.read_schema(pa.py_buffer(self.schema_bytes))

    def process(self, element: tuple[int, Iterable[tuple[bytes, bytes]]], num_shards: int) -> Iterator[str]:
        index, pairs = element
        rows = (row for _, row in pairs)
        path = FileSystems.join(self.output_dir, shard_filename(index, num_shards))
        yield write_shard(path, rows, self.schema, self.batch_rows).model_dump_json()


def _assign(row: KeyedRow, num_shards: int) -> tuple[int, tuple[bytes, bytes]]:
    sample_id, encoded = row
    return shard_of(sample_id, num_shards), (sample_id.encode("utf-8"), encoded)


class Write(Step):
    """Writes the dataset shards into the run's output directory."""

    type_name = "write"
    config_model = WriteConfig
    input_type = Sample
    output_type = None

    def expand(self, samples: beam.PCollection) -> dict[str, Any]:
        if self.context.output_dir is None:
            raise ValueError("the write step needs the run's output directory")
        config = self.config
        encoded = samples | "Encode" >> beam.ParDo(RecordDoFn(EncodeRow(), self.step_id)).with_outputs(
            REJECTED, LEDGER, main=MAIN
        )
        rows = encoded[MAIN]
        rows.element_type = beam.typehints.Tuple[str, bytes]

        awaited = None
        if config.num_shards:
            # A fixed count: rows stream into the sort (nothing waits for a count).
            num_shards: Any = config.num_shards
        else:

            def shard_count(rows_total: int) -> int:
                return max(1, math.ceil(rows_total / config.rows_per_shard))

            counted = rows | "Count" >> beam.combiners.Count.Globally() | "Shards" >> beam.Map(shard_count)
            num_shards = beam.pvalue.AsSingleton(counted)
            # The rows wait for the count on disk, not in the runner's memory.
            rows = rows | "AwaitCount" >> Merge(self.context.spill_dir("rows"), beam.typehints.Tuple[str, bytes])
            awaited = rows
        shard_infos = (
            rows
            | "Assign" >> beam.Map(_assign, num_shards)
            | "Sort" >> SortedGroups(self.context.spill_dir("sort"))
            | "WriteShard"
            >> beam.ParDo(
                WriteShards(self.context.output_dir, shard_schema(), config.batch_rows), num_shards=num_shards
            )
        )
        return {MAIN: shard_infos, REJECTED: encoded[REJECTED], LEDGER: encoded[LEDGER], AUDIT_ROWS: awaited}
