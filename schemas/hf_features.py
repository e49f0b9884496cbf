"""The ``datasets`` description of an Arrow schema, without importing ``datasets``.

A published output is a directory ``datasets.load_from_disk`` reads: its shards carry the
``huggingface`` schema metadata (``Features.to_dict()``) and it holds ``dataset_info.json``
(``dataclasses.asdict(DatasetInfo(features=...))``). Importing ``datasets`` to write these costs
about half a second of every run, for a few hundred bytes of JSON whose shape is fixed. This
module writes the same JSON for the Arrow types agentmill's schemas use (strings, booleans,
integers, floats, lists and structs); tests/test_fixed_cost.py compares it with ``datasets``'s
own output for the shard schema and for every supported type. For any other type the functions
ask ``datasets`` itself, so the output is always what ``datasets`` would write.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pyarrow as pa

_VALUES: dict[pa.DataType, str] = {
    pa.string(): "string",
    pa.large_string(): "large_string",
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float32(): "float32",
    pa.float64(): "float64",
}
#: ``DatasetInfo``'s fields in ``asdict`` form and order, ``features`` left empty.
INFO_DEFAULTS: dict[str, Any] = {
    "description": "",
    "citation": "",
    "homepage": "",
    "license": "",
    "features": None,
    "post_processed": None,
    "supervised_keys": None,
    "builder_name": None,
    "dataset_name": None,
    "config_name": None,
    "version": None,
    "splits": None,
    "download_checksums": None,
    "download_size": None,
    "post_processing_size": None,
    "dataset_size": None,
    "size_in_bytes": None,
}


class _Unsupported(Exception):
    pass


def _feature(arrow_type: pa.DataType, full: bool) -> Any:
    dtype = _VALUES.get(arrow_type)
    if dtype is not None:
        return {"dtype": dtype, "id": None, "_type": "Value"} if full else {"dtype": dtype, "_type": "Value"}
    if pa.types.is_struct(arrow_type):
        fields = (arrow_type.field(i) for i in range(arrow_type.num_fields))
        return {f.name: _feature(f.type, full) for f in fields}
    if pa.types.is_list(arrow_type):
        inner = _feature(arrow_type.value_type, full)
        if full:
            return {"feature": inner, "length": -1, "id": None, "_type": "List"}
        return {"feature": inner, "_type": "List"}
    raise _Unsupported(str(arrow_type))


def features_dict(schema: pa.Schema) -> dict[str, Any]:
    """``datasets.Features.from_arrow_schema(schema).to_dict()``."""
    try:
        return {field.name: _feature(field.type, full=False) for field in schema}
    except _Unsupported:
        import datasets

        return datasets.Features.from_arrow_schema(schema).to_dict()


def dataset_info_dict(schema: pa.Schema) -> dict[str, Any]:
    """``dataclasses.asdict(datasets.DatasetInfo(features=Features.from_arrow_schema(schema)))``."""
    try:
        features = {field.name: _feature(field.type, full=True) for field in schema}
    except _Unsupported:
        import datasets

        return asdict(datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(schema)))
    return {**INFO_DEFAULTS, "features": features}
