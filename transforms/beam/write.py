"""The Beam side of :mod:`transforms.write`: the DoFn that writes one shard."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from transforms.write import AUDIT_ROWS, shard_filename, write_shard


class WriteShards(beam.DoFn):
    """Writes one shard from ``(index, [(id, row), ...])`` sorted by (id, row).

    With the publish audit's result as the side input ``audit`` (``(report JSON, pending)``),
    the rows of the samples whose excerpts the audit still has to make (``pending``, a few ids)
    also go to the output ``AUDIT_ROWS`` as they pass: the audit needs no pass of its own."""

    def __init__(self, output_dir: str, schema: pa.Schema, batch_rows: int) -> None:
        self.output_dir = output_dir
        self.schema_bytes = schema.serialize().to_pybytes()
        self.batch_rows = batch_rows

    def setup(self) -> None:
        self.schema = pa.ipc.read_schema(pa.py_buffer(self.schema_bytes))

    def process(
        self, element: tuple[int, Iterable[tuple[bytes, bytes]]], num_shards: int, audit: Any = None
    ) -> Iterator[Any]:
        index, pairs = element
        wanted = {key.encode("utf-8") for key in audit[1]} if audit else set()
        picked: list[bytes] = []

        def rows() -> Iterator[bytes]:
            for key, row in pairs:
                if key in wanted:
                    picked.append(row)
                yield row

        path = FileSystems.join(self.output_dir, shard_filename(index, num_shards))
        yield write_shard(path, rows(), self.schema, self.batch_rows).model_dump_json()
        for row in picked:
            yield TaggedOutput(AUDIT_ROWS, row)
