"""Step ``write``: Samples -> Arrow IPC stream shards in the ``datasets.load_from_disk`` layout.

Guarantees: shard membership is a hash of the sample id and rows inside a shard are sorted by
id, so the same samples give byte-identical shards on every runner and worker count. The number
of shards is ``num_shards`` or ``ceil(rows / rows_per_shard)``. Rows are sorted into shards
with an external merge sort when the run spills (:mod:`transforms.spill`), so memory does not
grow with the data. Without a fixed ``num_shards`` the rows are sorted into runs on disk while
they are counted, and only the runs wait for the count (a pass that splits them by shard is
needed only when there is more than one shard). The step
reports the token, supervised-token and per-kind counts as ledger stats. Publishing (state.json, dataset_info.json,
manifest) is done by the runner once the pipeline has finished.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import Field

from schemas import ArrowCodec, Sample, ShardInfo
from schemas.hf_features import features_dict
from transforms.base import LEDGER, MAIN, REJECTED, RecordError, Stat, Step, StepConfig
from transforms.batching import record_batch

if TYPE_CHECKING:
    import apache_beam as beam

SAMPLE_CODEC = ArrowCodec(Sample)
#: ``(sample id as UTF-8, JSON of its Arrow row)``: bytes sort as the ids' code points do.
KeyedRow = tuple[bytes, bytes]
#: Extra entry of the step's result: the rows the publish audit picked for its excerpts (JSON;
#: ``None`` unless :meth:`Write.pick_for_audit` was called).
AUDIT_ROWS = "__audit_rows__"


class WriteConfig(StepConfig):
    num_shards: int | None = Field(None, ge=1)
    rows_per_shard: int = Field(50_000, ge=1)
    batch_rows: int = Field(1_000, ge=1)


def shard_filename(index: int, count: int) -> str:
    return f"data-{index:05d}-of-{count:05d}.arrow"


def shard_of(sample_id: str, num_shards: int) -> int:
    """Shard index of a sample: a hash of its id, independent of runner and worker count."""
    return shard_of_key(sample_id.encode("utf-8"), num_shards)


def shard_of_key(key: bytes, num_shards: int) -> int:
    """:func:`shard_of` of a sample id given as UTF-8 bytes."""
    return int(hashlib.sha256(key).hexdigest()[:16], 16) % num_shards


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


#: Threads that turn a shard's rows into Arrow batches while the writer merges and writes
#: (Arrow's JSON parser releases the GIL): a shard is written by one worker after the others are
#: done, so the cores it leaves idle parse the next batches. Batches in flight stay bounded.
PARSE_THREADS = 2


def write_shard(path: str, rows: Iterable[bytes], schema: pa.Schema, batch_rows: int) -> ShardInfo:
    """Write JSON-encoded Arrow rows as one IPC stream file; return its size, hash and count.

    Batches are parsed on :data:`PARSE_THREADS` threads and written in order, so the file is the
    same as parsing and writing one batch after the other; at most ``PARSE_THREADS + 1``
    batches are held at once."""
    from apache_beam.io.filesystems import FileSystems

    count = 0
    in_flight: collections.deque[Future[pa.RecordBatch]] = collections.deque()
    with FileSystems.create(path) as handle, ThreadPoolExecutor(PARSE_THREADS) as pool:
        sink = _HashingSink(handle)
        with pa.ipc.new_stream(sink, schema) as writer:
            try:
                source = iter(rows)
                for batch in iter(lambda: list(itertools.islice(source, batch_rows)), []):
                    in_flight.append(pool.submit(record_batch, batch, schema))
                    count += len(batch)
                    while len(in_flight) > PARSE_THREADS:
                        writer.write_batch(in_flight.popleft().result())
                while in_flight:
                    writer.write_batch(in_flight.popleft().result())
            finally:
                for future in in_flight:
                    future.cancel()
    return ShardInfo(filename=posixpath.basename(path), rows=count, bytes=sink.size, sha256=sink.digest.hexdigest())


class EncodeRow:
    """``Sample -> (id as UTF-8, JSON of its Arrow row)`` plus token and kind statistics."""

    def __call__(self, sample: Sample) -> Iterator[Any]:
        row = SAMPLE_CODEC.to_row(sample)
        try:
            encoded = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            key = sample.id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordError("invalid_unicode", f"text that is not valid Unicode: {exc.reason}") from None
        yield (key, encoded)
        yield Stat("tokens", sample.counts.tokens)
        yield Stat("supervised_tokens", sample.counts.supervised_tokens)
        yield Stat(f"kind:{sample.kind}", 1)


def _assign(row: KeyedRow, num_shards: int) -> tuple[int, KeyedRow]:
    return shard_of_key(row[0], num_shards), row


class Write(Step):
    """Writes the dataset shards into the run's output directory.

    :meth:`pick_for_audit` hands the step the publish audit's result; the step's result then
    has an extra entry ``AUDIT_ROWS``: the rows (JSON) of the samples the audit names."""

    type_name = "write"
    config_model = WriteConfig
    input_type = Sample
    output_type = None
    audit_result: beam.PCollection | None = None

    def pick_for_audit(self, audit_result: beam.PCollection) -> None:
        """Also emit the rows of the samples ``audit_result`` (a singleton ``(report JSON,
        pending)``, computed from this step's input) names, as ``AUDIT_ROWS``."""
        self.audit_result = audit_result

    def expand(self, samples: beam.PCollection) -> dict[str, Any]:
        import apache_beam as beam

        from transforms.beam.records import RecordDoFn
        from transforms.beam.write import WriteShards
        from transforms.spill import SortedGroups, SortedPartitions

        if self.context.output_dir is None:
            raise ValueError("the write step needs the run's output directory")
        config = self.config
        encoded = samples | "Encode" >> beam.ParDo(
            RecordDoFn(EncodeRow(), self.step_id, output_type=tuple)
        ).with_outputs(REJECTED, LEDGER, main=MAIN)
        rows = encoded[MAIN]
        rows.element_type = beam.typehints.Tuple[bytes, bytes]

        if config.num_shards:
            # A fixed count: rows stream into the sort (nothing waits for a count).
            num_shards: Any = config.num_shards
            sorted_shards = (
                rows
                | "Assign" >> beam.Map(_assign, num_shards)
                | "Sort" >> SortedGroups(self.context.spill_dir("sort"))
            )
        else:

            def shard_count(rows_total: int) -> int:
                return max(1, math.ceil(rows_total / config.rows_per_shard))

            # The rows are sorted into runs on disk while they are counted; the runs (not the
            # rows) wait for the count, and are split by shard once it is known.
            sort = SortedPartitions(self.context.spill_dir("sort"), shard_count, shard_of_key)
            sorted_shards, counted = rows | "Sort" >> sort
            num_shards = sort.count_view(counted)
        audit = {} if self.audit_result is None else {"audit": beam.pvalue.AsSingleton(self.audit_result)}
        written = sorted_shards | "WriteShard" >> beam.ParDo(
            WriteShards(self.context.output_dir, shard_schema(), config.batch_rows), num_shards=num_shards, **audit
        ).with_outputs(AUDIT_ROWS, main=MAIN)
        return {
            MAIN: written[MAIN],
            REJECTED: encoded[REJECTED],
            LEDGER: encoded[LEDGER],
            AUDIT_ROWS: None if self.audit_result is None else written[AUDIT_ROWS],
        }
