"""Arrow schema derived from pydantic models: the shard schema is never written by hand.

Scalars map to Arrow scalars, nested models to structs, lists to lists, ``Literal`` and ``str``
enums to strings; every Arrow field is nullable, as in schemas ``datasets`` makes (pydantic
enforces presence). Free-form JSON fields (annotated with :data:`JsonField`) are stored as JSON
text, because Arrow and ``datasets`` need one type per column.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel


class ArrowJson:
    """Marker: store this field as JSON text in Arrow."""

    def __repr__(self) -> str:
        return "ArrowJson()"


JsonField = Annotated[Any, ArrowJson()]

_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


@dataclass(frozen=True)
class _Plan:
    """How one field is converted: ``kind`` in scalar | json | model | list_model."""

    name: str
    kind: str
    arrow: pa.DataType
    nullable: bool
    children: tuple[_Plan, ...] = ()
    model: type[BaseModel] | None = None


def _unwrap(annotation: Any) -> tuple[Any, bool, bool]:
    """Return (inner annotation, nullable, is_json)."""
    nullable = False
    is_json = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            args = typing.get_args(annotation)
            if any(isinstance(meta, ArrowJson) for meta in args[1:]):
                is_json = True
            annotation = args[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != len(typing.get_args(annotation)):
                nullable = True
            if len(args) == 1:
                annotation = args[0]
                continue
            raise TypeError(f"union {annotation!r} has no Arrow type; use JsonField")
        return annotation, nullable, is_json


def _plan_for(name: str, annotation: Any) -> _Plan:
    inner, nullable, is_json = _unwrap(annotation)
    if is_json:
        return _Plan(name, "json", pa.string(), True)
    origin = typing.get_origin(inner)
    if inner in _SCALARS:
        return _Plan(name, "scalar", _SCALARS[inner], nullable)
    if origin is Literal or (isinstance(inner, type) and issubclass(inner, enum.Enum)):
        return _Plan(name, "scalar", pa.string(), nullable)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        children = _model_plans(inner)
        struct = pa.struct([pa.field(c.name, c.arrow) for c in children])
        return _Plan(name, "model", struct, nullable, children, inner)
    if origin in (list, tuple):
        (item,) = typing.get_args(inner)[:1]
        item_plan = _plan_for("item", item)
        kind = "list_model" if item_plan.kind in ("model", "json") else "scalar"
        return _Plan(name, kind, pa.list_(item_plan.arrow), nullable, (item_plan,))
    raise TypeError(f"field {name!r}: no Arrow type for {inner!r}; use JsonField")


def _model_plans(model: type[BaseModel]) -> tuple[_Plan, ...]:
    hints = typing.get_type_hints(model, include_extras=True)
    return tuple(_plan_for(name, hints[name]) for name in model.model_fields)


def _encode(plan: _Plan, value: Any) -> Any:
    if value is None:
        return None
    if plan.kind == "scalar":
        return value
    if plan.kind == "json":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if plan.kind == "model":
        return {c.name: _encode(c, value.get(c.name)) for c in plan.children}
    item = plan.children[0]
    return [_encode(item, v) for v in value]


def _decode(plan: _Plan, value: Any) -> Any:
    if value is None:
        return None
    if plan.kind == "scalar":
        return value
    if plan.kind == "json":
        return json.loads(value)
    if plan.kind == "model":
        return {c.name: _decode(c, value.get(c.name)) for c in plan.children}
    item = plan.children[0]
    return [_decode(item, v) for v in value]


class ArrowCodec:
    """Converts instances of one pydantic model to Arrow rows and back.

    ``to_row`` takes ``model.model_dump(mode="json")`` output (or the model itself) and returns a
    dict matching :attr:`schema`; ``from_row`` inverts it exactly.
    """

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self._plans = _model_plans(model)
        # Every Arrow field is nullable, as in schemas made by `datasets`; pydantic enforces presence.
        self.schema = pa.schema([pa.field(p.name, p.arrow) for p in self._plans])

    def to_row(self, record: BaseModel | dict[str, Any]) -> dict[str, Any]:
        data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
        return {p.name: _encode(p, data.get(p.name)) for p in self._plans}

    def from_row(self, row: dict[str, Any]) -> BaseModel:
        return self.model.model_validate({p.name: _decode(p, row.get(p.name)) for p in self._plans})

    def to_batch(self, rows: list[dict[str, Any]]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist(rows, schema=self.schema)


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema derived from ``model``."""
    return ArrowCodec(model).schema
