"""Step ``read``: files in a known format -> Trajectory records.

Guarantees: every record of every matched file ends as one Trajectory or one dead letter whose
location names the file and the line, row or item; an empty or unreadable file is one dead
letter; a truncated or corrupt compressed file keeps the records read before the damage and adds
one dead letter that counts them (see :mod:`transforms.files`); a pattern that matches nothing
is an error before the run starts.

Every Trajectory the step emits can be encoded and decoded again by the stages after it: a lone
surrogate (``\\ud800``) in any text, id or metadata value is a dead letter ``invalid_unicode``;
tool parameters or call arguments nested deeper than ``MAX_JSON_DEPTH`` levels are
``too_deeply_nested``; a NaN or infinite reward, metadata value, parameter or argument is
``non_finite_number`` (JSON text has no form for it), all with the file and line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticSerializationError

from schemas import Role, Trajectory, clip
from transforms.base import LEDGER, MAIN, REJECTED, Failed, RecordError, Step, StepConfig
from transforms.files import RawRecord, common_folder, iter_records, label_of, non_finite_path, resolve_paths
from transforms.formats import PARSERS, FieldNames, ParseContext, jsonl

if TYPE_CHECKING:
    import apache_beam as beam

Format = Literal["agentinstruct", "agent_flan", "sharegpt", "openai", "jsonl"]


class ReadConfig(StepConfig):
    """Config of ``read``. Field overrides replace the format's defaults (dotted paths allowed)."""

    format: Format
    paths: list[str] = Field(min_length=1)
    source: str | None = None
    task: str | None = None
    id_field: str | None = None
    task_field: str | None = None
    reward_field: str | None = None
    success_field: str | None = None
    tools_field: str | None = None
    messages_field: str | None = None
    roles: dict[str, Role] = Field(default_factory=dict)
    mapping: jsonl.FieldMapping | None = None
    max_record_bytes: int = Field(16 * 1024 * 1024, ge=1)
    max_record_chars: int = Field(1_000_000, ge=1)

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _mapping_for_jsonl(self) -> ReadConfig:
        if (self.format == "jsonl") != (self.mapping is not None):
            raise ValueError("format 'jsonl' needs a 'mapping', and only it takes one")
        return self

    def field_names(self) -> FieldNames:
        base = PARSERS[self.format][1] if self.format in PARSERS else FieldNames()

        def pick(override: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
            return (override,) if override else default

        return FieldNames(
            id=pick(self.id_field, base.id),
            task=pick(self.task_field, base.task),
            reward=pick(self.reward_field, base.reward),
            success=pick(self.success_field, base.success),
            tools=pick(self.tools_field, base.tools),
        )


class ReadFile:
    """Picklable ``path -> records`` function: decodes the file and parses each record."""

    def __init__(self, config: ReadConfig, source: str, base: str = "") -> None:
        self.config = config
        self.source = source
        self.base = base
        self.fields = config.field_names()
        self.roles = {k.lower(): v for k, v in config.roles.items()}

    def parse(self, raw: RawRecord, file_name: str) -> Trajectory:
        ctx = ParseContext(
            source=self.source,
            file_name=file_name,
            index=raw.index,
            location=raw.location,
            task_from_id=self.config.format == "agentinstruct",
            fields=self.fields,
            task=self.config.task,
            messages_path=self.config.messages_field,
            role_aliases=self.roles,
            max_record_chars=self.config.max_record_chars,
        )
        if self.config.format == "jsonl":
            return jsonl.parse(raw.obj, ctx, self.config.mapping)
        return PARSERS[self.config.format][0](raw.obj, ctx)

    def __call__(self, path: str) -> Iterator[Trajectory | Failed]:
        file_name = label_of(path, self.base)
        for raw in iter_records(path, self.config.max_record_bytes, file_name):
            if isinstance(raw, Failed):
                yield raw
                continue
            try:
                trajectory = self.parse(raw, file_name)
                check_encodable(trajectory, serialize=raw.surrogates)
                yield trajectory
            except RecordError as exc:
                yield Failed(exc.reason, exc.detail, raw.location, _dump(raw.obj))
            except ValidationError as exc:
                yield Failed("invalid_record", str(exc), raw.location, _dump(raw.obj))
            except RecursionError:
                yield Failed("too_deeply_nested", "record nested too deeply to process", raw.location, "")
            except UnicodeEncodeError as exc:  # e.g. an id hashed for the trajectory id
                yield Failed("invalid_unicode", _surrogate_detail(exc), raw.location, _dump(raw.obj))
            except Exception as exc:  # a parser bug must not take the pipeline down or lose the record
                yield Failed("unexpected_error", f"{type(exc).__name__}: {exc}", raw.location, _dump(raw.obj))


#: Deepest nesting of tool parameters and call arguments a Trajectory may carry: the JSON
#: decoder of the coders between stages stops at 200 levels of the whole record, and a Sample
#: wraps arguments a few levels deeper than a Trajectory does.
MAX_JSON_DEPTH = 100


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value (a scalar is 0), counted up to ``limit + 1``."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return 0
    if limit <= 0:
        return 1
    return 1 + max((json_depth(child, limit - 1) for child in children), default=0)


def check_encodable(trajectory: Trajectory, serialize: bool = True) -> None:
    """Raise :class:`RecordError` unless the stages after ``read`` can encode ``trajectory``
    (see the module docstring): nesting, non-finite numbers, then lone surrogates, by encoding
    it once (``serialize``; a reader skips that when the record's text has no surrogate escape)."""
    values: list[tuple[str, Any]] = [(f"tool {t.name!r} parameters", t.parameters) for t in trajectory.tools]
    for index, turn in enumerate(trajectory.turns):
        values += [(f"turn {index}, call {c.name!r} arguments", c.arguments) for c in turn.tool_calls]
    for where, value in values:
        depth = json_depth(value, MAX_JSON_DEPTH)
        if depth > MAX_JSON_DEPTH:
            raise RecordError("too_deeply_nested", f"{where} nest more than {MAX_JSON_DEPTH} levels deep")
        if (path := non_finite_path(value)) is not None:
            raise RecordError("non_finite_number", f"{where}: {path} is not a finite number")
    if trajectory.reward is not None and not math.isfinite(trajectory.reward):
        raise RecordError("non_finite_number", f"reward is {trajectory.reward}")
    if (path := non_finite_path(trajectory.metadata, "metadata")) is not None:
        raise RecordError("non_finite_number", f"{path} is not a finite number")
    if not serialize:
        return
    try:
        trajectory.model_dump_json()
    except PydanticSerializationError as exc:
        if "surrogates not allowed" in str(exc):
            raise RecordError("invalid_unicode", _surrogate_detail(exc)) from None
        raise RecordError("unencodable_record", str(exc)) from None


def _surrogate_detail(exc: Exception) -> str:
    return f"{exc} (a lone surrogate escape such as \\ud800 has no UTF-8 form)"


def _dump(obj: Any) -> str:
    try:
        return clip(json.dumps(obj, ensure_ascii=False, default=str))
    except (RecursionError, ValueError):
        return clip(repr(obj)[:PAYLOAD_REPR_LIMIT])


PAYLOAD_REPR_LIMIT = 20_000


class Read(Step):
    """Reads ``paths`` (globs; parquet, json, jsonl, optionally .gz) in ``format``."""

    type_name = "read"
    config_model = ReadConfig
    input_type = None
    output_type = Trajectory

    def input_files(self) -> list[str]:
        """The files this step reads, resolved against the spec's folder."""
        if not hasattr(self, "_files"):
            self._files = resolve_paths(self.config.paths, self.context.base_dir)
        return self._files

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, Any]:
        import apache_beam as beam

        from transforms.beam.records import SourceDoFn

        reader = ReadFile(self.config, self.config.source or self.step_id, common_folder(self.input_files()))
        outputs = (
            pbegin
            | "Files" >> beam.Create(self.input_files(), reshuffle=False)  # "Spread" reshuffles them
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(SourceDoFn(reader, self.step_id)).with_outputs(REJECTED, LEDGER, main=MAIN)
        )
        return self._typed(outputs)
