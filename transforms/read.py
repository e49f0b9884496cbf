"""Step ``read``: files in a known format -> Trajectory records.

Guarantees: every record of every matched file ends as one Trajectory or one dead letter whose
location names the file and the line, row or item; an empty or unreadable file is one dead
letter; a pattern that matches nothing is an error before the run starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import apache_beam as beam
from pydantic import Field, ValidationError, field_validator, model_validator

from schemas import Role, Trajectory, clip
from transforms.base import LEDGER, MAIN, REJECTED, Failed, RecordError, SourceDoFn, Step, StepConfig
from transforms.files import RawRecord, common_folder, iter_records, label_of, resolve_paths
from transforms.formats import PARSERS, FieldNames, ParseContext, jsonl

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
                yield self.parse(raw, file_name)
            except RecordError as exc:
                yield Failed(exc.reason, exc.detail, raw.location, _dump(raw.obj))
            except ValidationError as exc:
                yield Failed("invalid_record", str(exc), raw.location, _dump(raw.obj))
            except RecursionError:
                yield Failed("too_deeply_nested", "record nested too deeply to process", raw.location, "")
            except Exception as exc:  # a parser bug must not take the pipeline down or lose the record
                yield Failed("unexpected_error", f"{type(exc).__name__}: {exc}", raw.location, _dump(raw.obj))


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
        reader = ReadFile(self.config, self.config.source or self.step_id, common_folder(self.input_files()))
        outputs = (
            pbegin
            | "Files" >> beam.Create(self.input_files())
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(SourceDoFn(reader, self.step_id)).with_outputs(REJECTED, LEDGER, main=MAIN)
        )
        return self._typed(outputs)
