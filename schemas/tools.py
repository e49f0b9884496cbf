"""Tool specifications and tool calls."""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.arrow import JsonField


class ToolSpec(BaseModel):
    """A tool the agent may call: its name, what it does, and a JSON-schema of its arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    parameters: JsonField = Field(default_factory=dict)


class ToolCall(BaseModel):
    """One call of a tool. ``arguments`` is the parsed JSON value of the arguments; ``id`` is the
    call's id (the source's, or one a reader derived, e.g. ``call_0``), which the ``tool``
    message answering it names as its ``tool_call_id``; ``None`` where nothing links to it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    arguments: JsonField = Field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as compact JSON text (key order as given)."""
        import json

        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))


def parse_tool_list(value: Any) -> list[ToolSpec]:
    """Tool specs from a list or a JSON string of a list.

    Accepts plain ``{name, description, parameters}`` entries and OpenAI-style
    ``{type: "function", function: {...}}`` wrappers. A ``required`` list written beside
    ``parameters`` instead of inside it (LLaMA-Factory's reason_tool_use) is moved into an object
    schema that has none, so the schema keeps saying what a call must pass. Raises ``ValueError``
    on anything else.
    """
    import json

    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tools is not valid JSON: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"tools must be a list, got {type(value).__name__}")
    tools = []
    for entry in value:
        if not isinstance(entry, dict):
            raise ValueError(f"tool entry must be an object, got {type(entry).__name__}")
        if "function" in entry and isinstance(entry["function"], dict):
            entry = entry["function"]
        tools.append(
            ToolSpec(
                name=entry.get("name") or "",
                description=entry.get("description") or "",
                parameters=_with_required(entry.get("parameters") or {}, entry.get("required")),
            )
        )
    return tools


def _with_required(parameters: Any, required: Any) -> Any:
    """``parameters`` with a sibling ``required`` list moved in, when it is an object schema
    with properties and no ``required`` of its own."""
    if (
        isinstance(required, list)
        and required
        and isinstance(parameters, dict)
        and isinstance(parameters.get("properties"), dict)
        and "required" not in parameters
    ):
        return {**parameters, "required": required}
    return parameters


def strict_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` added to an object schema with properties
    that does not say (a call may then pass no key the tool does not declare)."""
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def parameters_validator(parameters: Any, forbid_extra: bool = True, draft7_by_default: bool = True) -> Any:
    """A ``jsonschema`` validator for a tool's ``parameters`` (the draft the schema names in
    ``$schema``, else draft 7, or the latest draft with ``draft7_by_default=False``; with
    ``forbid_extra``, :func:`strict_parameters` first), or the text of the schema's own error when
    it is not a valid JSON Schema. Built and checked once per schema (content and key order) and
    process: checking a schema costs far more than validating arguments against it, and the
    steps that filter calls and the audit that checks them judge alike."""
    key = json.dumps(parameters, ensure_ascii=False)
    return _parameters_validator(key, forbid_extra, draft7_by_default)


@functools.lru_cache(maxsize=4096)
def _parameters_validator(key: str, forbid_extra: bool, draft7_by_default: bool) -> Any:
    import jsonschema

    schema = json.loads(key)
    if forbid_extra and isinstance(schema, dict):
        schema = strict_parameters(schema)
    if draft7_by_default:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    else:
        cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return cls(schema)
