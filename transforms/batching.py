"""Arrow record batches from rows encoded as compact JSON, built in C++ a batch at a time.

``write`` receives each sample as the compact JSON text of its Arrow row (``EncodeRow``, in
the parallel stage) and, once the rows of a shard are sorted, turns every ``batch_rows`` of them
into one Arrow record batch. That last pass runs once per shard, on one worker, after the
others have finished: with ``rows_per_shard`` larger than the data (one shard), every row's
``json.loads`` and pyarrow's Python-object conversion (``RecordBatch.from_pylist``) sat in the
serial tail of the run, about a sixth of the whole run's CPU time for read -> to_chat -> write,
and capped what a second worker could gain (issue 16).

:func:`record_batch` parses the batch's rows with Arrow's JSON reader against the shard schema
instead. Guarantees:

- the batch is equal, value for value and type for type, to ``RecordBatch.from_pylist([
  json.loads(row) ...], schema=schema)``, so the shards' bytes do not change (tests compare
  both on real and edge-case rows);
- the fast path is only taken for schemas whose leaves are strings, booleans and integers
  (the JSON reader parses floats itself, which could round differently), and its batch is
  only kept when no struct in it is null (see :func:`_null_struct`); any batch the
  JSON reader refuses (a field the schema lacks, a value of another type, text that is not
  one object per line) is built the old way, so errors and edge cases behave exactly as before.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.json as pa_json


def _simple(data_type: pa.DataType) -> bool:
    """Whether the JSON reader and ``from_pylist`` agree on every value of ``data_type``."""
    if pa.types.is_struct(data_type):
        return all(_simple(data_type.field(i).type) for i in range(data_type.num_fields))
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return _simple(data_type.value_type)
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_integer(data_type)
    )


@functools.lru_cache(maxsize=8)
def _fast_path(schema: pa.Schema) -> pa_json.ParseOptions | None:
    """Parse options for the JSON reader, or ``None`` when ``schema`` needs the slow path."""
    if not all(_simple(field.type) for field in schema):
        return None
    return pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")


def slow_record_batch(rows: Sequence[bytes], schema: pa.Schema) -> pa.RecordBatch:
    """The reference: each row through ``json.loads``, then ``RecordBatch.from_pylist``."""
    return pa.RecordBatch.from_pylist([json.loads(row) for row in rows], schema=schema)


def record_batch(rows: Sequence[bytes], schema: pa.Schema) -> pa.RecordBatch:
    """One record batch of ``schema`` from compact-JSON rows (one object each, no raw
    newline inside, as ``json.dumps`` writes them); equal to :func:`slow_record_batch`."""
    options = _fast_path(schema)
    if options is None or not rows or any(b"\n" in row for row in rows):
        return slow_record_batch(rows, schema)
    text = b"\n".join(rows)
    read = pa_json.ReadOptions(use_threads=False, block_size=max(len(text) + 1, 1 << 20))
    try:
        table = pa_json.read_json(io.BytesIO(text), read_options=read, parse_options=options)
        if table.num_rows != len(rows) or table.column_names != schema.names:
            return slow_record_batch(rows, schema)
        batches = table.cast(schema).combine_chunks().to_batches()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return slow_record_batch(rows, schema)
    if len(batches) != 1 or any(_null_struct(column) for column in batches[0].columns):
        return slow_record_batch(rows, schema)
    return batches[0]


def _null_struct(array: pa.Array) -> bool:
    """Whether ``array`` holds a null struct at any depth. Under a null struct the JSON reader
    marks the children null too, where ``from_pylist`` leaves them valid: equal values, other
    bytes, so such batches take the reference path. (Samples always carry their structs.)"""
    if pa.types.is_struct(array.type):
        return array.null_count > 0 or any(_null_struct(array.field(i)) for i in range(array.type.num_fields))
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return _null_struct(array.values)
    return False
