"""Step ``check_calls``: every structured call of a sample names a declared tool and its
arguments validate against that tool's JSON Schema; Sample -> Sample.

For native tool-calling data (``to_chat`` output, whose calls are the source's structured
``tool_calls``), this is the gate that ``align`` is for aligned data: a sample that calls a tool
it does not declare is filtered ``undeclared_tool``, one whose arguments fail the schema
``invalid_arguments``, one whose called tool has a schema that is not valid JSON Schema
``invalid_schema`` (each with the offending call in the detail). With ``require_linked_results``
(default) a ``tool`` message that answers no call of the sample (no ``tool_call_id``, or an id
no earlier call has) is filtered ``unlinked_tool_result``: its call is missing or only written in
prose (glaive has such conversations: "AI 计算折扣: {...}" followed by the tool's result), and a
native template would render a result nobody asked for. With ``grounded_contacts`` (default) a
supervised call whose arguments send to an email address, or use a date, that no earlier
message gives is filtered ``ungrounded_argument`` (:mod:`transforms.grounded_arguments`:
glaive's translated ``老板@公司.com`` for the user's ``boss@company.com``, placeholders, a
``current_date`` made up for "today"). Validation is the audit's
(``argument_schema``): the schema's own ``$schema`` or draft 7, and with ``forbid_extra``
(default) a call may not pass keys an object schema does not list unless the schema allows it.

``python_types`` (default on) first maps the Python type names some sources write in their
tool schemas (reason_tool_use, BFCL: ``dict``, ``list``, ``float``, ``int``, ``str``, ``bool``,
``tuple``, ``any``, also as ``"str, optional"``) to JSON Schema's (``object``, ``array``,
``number``, ``integer``, ``string``, ``boolean``, ``array``; ``any`` drops the type), and wraps a
bare property map (xLAM/RapidAPI style: ``{"q": {"type": "string", "default": "pizza"}}``, no
JSON Schema keyword at the top, every value a property schema) as ``{"type": "object",
"properties": ...}`` with nothing required (every such property has a default), so their calls
can be checked at all and a chat template renders the tools as every other sample's; the
sample's declared tools are the mapped ones (counted as ``schemas_mapped``).

Guarantees: messages and calls are never changed; every sample is kept or filtered with a
reason; ``calls`` counts the calls of the samples kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from schemas import Role, Sample, ToolCall, ToolSpec
from schemas.tools import parameters_validator
from transforms.base import Filtered, RecordStep, Stat, StepConfig, StepContext
from transforms.grounded_arguments import ungrounded_call

PYTHON_TYPES = {
    "dict": "object",
    "list": "array",
    "tuple": "array",
    "float": "number",
    "int": "integer",
    "str": "string",
    "bool": "boolean",
}


class CheckCallsConfig(StepConfig):
    python_types: bool = True
    forbid_extra: bool = True
    require_linked_results: bool = True
    grounded_contacts: bool = True


#: Top-level keys that make a parameters object a JSON Schema rather than a bare property map.
SCHEMA_KEYWORDS = frozenset(
    {"type", "properties", "required", "$schema", "$ref", "$defs", "definitions", "additionalProperties",
     "patternProperties", "anyOf", "oneOf", "allOf", "not", "items", "enum", "const", "title", "description"}
)  # fmt: skip
_PROPERTY_KEYS = frozenset({"type", "description", "default", "enum", "items", "properties"})


def is_bare_property_map(parameters: Any) -> bool:
    """Whether ``parameters`` is a map of property name -> property schema written without the
    object schema around it: no JSON Schema keyword at the top, every value a dict holding a
    ``type`` or ``description`` and only property keywords."""
    return (
        isinstance(parameters, dict)
        and bool(parameters)
        and not SCHEMA_KEYWORDS & set(parameters)
        and all(
            isinstance(v, dict) and ("type" in v or "description" in v) and set(v) <= _PROPERTY_KEYS | {"title"}
            for v in parameters.values()
        )
    )


def _python_type(name: str) -> str | None:
    """JSON Schema's name for a Python type name (``"int, optional"`` too); ``None`` for ``any``."""
    base = name.removesuffix("optional").rstrip(" ,") if name.endswith(", optional") else name
    return None if base == "any" else PYTHON_TYPES.get(base, base)


def json_schema_parameters(parameters: Any) -> Any:
    """A tool's parameters as JSON Schema: a bare property map wrapped as an object schema, then
    Python type names mapped (:func:`json_schema_types`)."""
    if is_bare_property_map(parameters):
        parameters = {"type": "object", "properties": parameters}
    return json_schema_types(parameters)


def json_schema_types(schema: Any) -> Any:
    """``schema`` with Python type names mapped to JSON Schema's, at every depth (``any``
    removes the ``type`` key); other values unchanged."""
    if isinstance(schema, list):
        return [json_schema_types(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            mapped = _python_type(value)
            if mapped is not None:
                out[key] = mapped
        elif key == "type" and isinstance(value, list):
            out[key] = [PYTHON_TYPES.get(v, v) if isinstance(v, str) else v for v in value]
        elif key in ("properties", "patternProperties", "definitions", "$defs") and isinstance(value, dict):
            out[key] = {name: json_schema_types(sub) for name, sub in value.items()}
        else:
            out[key] = json_schema_types(value)
    return out


class CallChecker:
    """Picklable processor: validators are built once per schema (per worker)."""

    def __init__(self, config: CheckCallsConfig, context: StepContext) -> None:
        self.config = config
        self.context = context

    def problem(self, call: ToolCall, tools: dict[str, ToolSpec]) -> Filtered | None:
        """Why ``call`` fails against the declared ``tools``, or None."""
        spec = tools.get(call.name)
        if spec is None:
            listed = ", ".join(sorted(tools)) or "none"
            return Filtered("undeclared_tool", f"call of {call.name!r}; declared: {listed}")
        if not isinstance(spec.parameters, dict) or not spec.parameters:
            return None
        validator = parameters_validator(spec.parameters, self.config.forbid_extra)
        if isinstance(validator, str):
            return Filtered("invalid_schema", f"tool {call.name!r}: {validator}")
        error = next(iter(validator.iter_errors(call.arguments)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
        return Filtered("invalid_arguments", f"{call.name}({call.arguments_json()[:200]}) {where}: {error.message}")

    @staticmethod
    def ungrounded(call: ToolCall, sample: Sample, index: int) -> Filtered | None:
        """``ungrounded_argument`` when ``call`` (in message ``index``) sends to an email address
        that no earlier message's text gives, else None."""
        detail = ungrounded_call(call.name, call.arguments, (m.content for m in sample.messages[:index]))
        return Filtered("ungrounded_argument", detail) if detail is not None else None

    def __call__(self, sample: Sample) -> Iterator[Any]:
        if self.config.python_types and sample.tools:
            tools = [t.model_copy(update={"parameters": json_schema_parameters(t.parameters)}) for t in sample.tools]
            if tools != sample.tools:
                yield Stat("schemas_mapped", 1)
                sample = sample.model_copy(update={"tools": tools})
        declared = {t.name: t for t in sample.tools}
        calls = 0
        ids: set[str] = set()
        for i, message in enumerate(sample.messages):
            if self.config.require_linked_results and message.role is Role.TOOL and message.tool_call_id not in ids:
                yield Filtered("unlinked_tool_result", f"message {i}: {message.content[:200]}")
                return
            for call in message.tool_calls:
                if call.id is not None:
                    ids.add(call.id)
                calls += 1
                problem = self.problem(call, declared)
                if problem is None and self.config.grounded_contacts and message.loss:
                    problem = self.ungrounded(call, sample, i)
                if problem is not None:
                    yield problem
                    return
        yield Stat("calls", calls)
        lineage = sample.lineage.model_copy(update={"steps": [*sample.lineage.steps, self.context.step_id]})
        yield sample.model_copy(update={"lineage": lineage})


class CheckCalls(RecordStep):
    """Keeps samples whose every call is declared and valid (see the module docstring)."""

    type_name = "check_calls"
    config_model = CheckCallsConfig
    input_type = Sample
    output_type = Sample

    def processor(self) -> CallChecker:
        return CallChecker(self.config, self.context)
