"""``agentmill export DIR --to openai|sharegpt --output PATH``: an output's samples as the JSON
Lines the usual SFT trainers read.

``openai``: one ``{"messages": [...], "tools": [...]}`` object per sample, as TRL's
``SFTTrainer`` (and most tools that take OpenAI chat data) reads it. Assistant calls are OpenAI
``tool_calls`` (``{"id", "type": "function", "function": {"name", "arguments"}}``, arguments as
JSON text by default, or as objects with ``arguments="object"``); tool results are ``tool``
messages with ``tool_call_id`` (and ``name``); ``tools`` are OpenAI function specs.

``sharegpt``: LLaMA-Factory's ShareGPT dialect: ``{"conversations": [{"from", "value"}],
"system", "tools"}`` with ``human`` / ``gpt`` / ``function_call`` / ``observation`` turns
(parallel calls: one ``function_call`` turn whose value is a JSON list; their results: one
``observation`` turn whose value is a JSON list of the result texts), ``tools`` as JSON text.
LLaMA-Factory wants the turns to alternate (human or observation, then gpt or function_call):
consecutive messages of one side are joined, prose beside a call (in the same message, or an
assistant message right before it) is dropped (the format has no place for it), trailing
prompt turns are cut, and a sample that does not start with a user turn is skipped; every such
loss is counted in the :class:`ExportReport`.

Per-turn loss flags: with ``loss_key="train"`` every message gets axolotl's ``train`` key
(``true``/``false``), with ``loss_key="weight"`` a ``weight`` key (``1``/``0``); off by
default, as TRL and LLaMA-Factory do not read them (docs/export.md says what each target
loses).

The export renders what ``agentmill-train`` trains on (:mod:`schemas.chat`): a call a message
already spells in its text (align's ``arguments`` part, kept-format ``react``) stays text and is
not exported a second time as a structured call (counted as ``calls_in_text``), and a sample's
tools are exported only where the trainer gives them to the template
(:func:`schemas.chat.template_tools`: not for a sample that writes its calls as text, nor for a
call-free sample of an output whose calls are all text, :func:`schemas.chat.call_convention`), so TRL and
LLaMA-Factory see the same prompt and the same call format as ``train/sft.py``.

Guarantees: samples are written in shard order, one line each, the file replaced atomically;
every native structured call is exported with its name and arguments (JSON-equal), its id
(openai) and its order; a sample that cannot be exported is counted with its reason, never
silently dropped.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.errors import OutputError
from schemas import Message, Role, Sample, ToolCall
from schemas.chat import call_convention, native_calls, template_tools

Target = Literal["openai", "sharegpt"]
LossKey = Literal["train", "weight"]
TARGETS: tuple[str, ...] = ("openai", "sharegpt")
LOSS_KEYS: tuple[str, ...] = ("train", "weight")


@dataclass
class ExportReport:
    """What an export wrote and what the target format could not hold."""

    target: str
    samples: int = 0
    written: int = 0
    calls: int = 0
    calls_in_text: int = 0
    convention: str = "mixed"
    skipped: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "samples": self.samples,
            "written": self.written,
            "calls": self.calls,
            "calls_in_text": self.calls_in_text,
            "convention": self.convention,
            "skipped": dict(sorted(self.skipped.items())),
            "lost": dict(sorted(self.lost.items())),
        }


class SkipSample(Exception):
    """A sample the target format cannot hold; ``reason`` is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _arguments(call: ToolCall, arguments: str) -> Any:
    return call.arguments_json() if arguments == "string" else call.arguments


def _flags(entry: dict[str, Any], loss: bool, loss_key: str | None) -> dict[str, Any]:
    if loss_key == "train":
        entry["train"] = loss
    elif loss_key == "weight":
        entry["weight"] = 1 if loss else 0
    return entry


def openai_message(message: Message, loss_key: str | None = None, arguments: str = "string") -> dict[str, Any]:
    """One message in OpenAI chat form (see the module docstring)."""
    entry: dict[str, Any] = {"role": message.role.value, "content": message.content}
    calls = native_calls(message)
    if calls:
        entry["tool_calls"] = [
            {
                "id": call.id or f"call_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call, arguments)},
            }
            for i, call in enumerate(calls)
        ]
    if message.role is Role.TOOL:
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            entry["name"] = message.name
    return _flags(entry, message.loss, loss_key)


def to_openai(
    sample: Sample, report: ExportReport, loss_key: str | None = None, arguments: str = "string"
) -> dict[str, Any]:
    """The sample as ``{"messages", "tools"}`` (plus ``id`` when asked by the caller); ``tools``
    as the trainer gives them to the template (module docstring), else ``[]``."""
    messages = [openai_message(m, loss_key, arguments) for m in sample.messages]
    if loss_key is None and any(not m.loss for m in sample.messages if m.role is Role.ASSISTANT):
        report.lost["unsupervised_assistant_turn_without_loss_key"] += 1
    return {"messages": messages, "tools": template_tools(sample, report.convention) or []}


def _sharegpt_turns(sample: Sample, report: ExportReport, loss_key: str | None) -> list[dict[str, Any]]:
    """Alternating ShareGPT turns of the non-system messages (see the module docstring)."""
    turns: list[dict[str, Any]] = []
    results: list[str] = []
    result_loss = False
    text_call = False

    def flush_results() -> None:
        nonlocal results, result_loss
        if results:
            value = results[0] if len(results) == 1 else json.dumps(results, ensure_ascii=False)
            turns.append(_flags({"from": "observation", "value": value}, result_loss, loss_key))
            results, result_loss = [], False

    for message in sample.messages:
        if message.role is Role.SYSTEM:
            continue
        if message.role is Role.TOOL:
            answered = turns and (turns[-1]["from"] == "function_call" or (turns[-1]["from"] == "gpt" and text_call))
            if not answered and not results:
                raise SkipSample("tool_result_without_call")
            results.append(message.content)
            result_loss = result_loss or message.loss
            continue
        flush_results()
        text_call = bool(message.tool_calls)  # a gpt turn that spells its call may be answered
        native = native_calls(message)
        if native:
            if message.content.strip():
                report.lost["prose_beside_calls"] += 1
            calls = [{"name": c.name, "arguments": c.arguments} for c in native]
            value = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            if turns and turns[-1]["from"] == "function_call":
                raise SkipSample("call_after_call_without_result")
            if turns and turns[-1]["from"] == "gpt":  # prose before the call: no place for it
                turns.pop()
                report.lost["prose_beside_calls"] += 1
            turns.append(_flags({"from": "function_call", "value": value}, message.loss, loss_key))
            continue
        name = "human" if message.role is Role.USER else "gpt"
        if turns and turns[-1]["from"] == name:  # same side twice: one turn
            turns[-1]["value"] += "\n\n" + message.content
            report.lost["joined_turns"] += 1
            if loss_key is not None and bool(turns[-1].get(loss_key)) != message.loss:
                report.lost["loss_flag_of_joined_turn"] += 1
                _flags(turns[-1], True, loss_key)
            continue
        if turns and name == "gpt" and turns[-1]["from"] == "function_call":
            raise SkipSample("assistant_turn_after_call_without_result")
        if turns and name == "human" and turns[-1]["from"] == "function_call":
            raise SkipSample("call_without_result")
        if turns and name == "human" and turns[-1]["from"] == "observation":
            raise SkipSample("user_turn_after_tool_result")
        turns.append(_flags({"from": name, "value": message.content}, message.loss, loss_key))
    flush_results()
    while turns and turns[-1]["from"] in ("human", "observation"):
        turns.pop()
        report.lost["trailing_prompt_turn"] += 1
    if not turns:
        raise SkipSample("no_assistant_turn")
    if turns[0]["from"] != "human":
        raise SkipSample("does_not_start_with_user")
    return turns


def to_sharegpt(sample: Sample, report: ExportReport, loss_key: str | None = None) -> dict[str, Any]:
    """The sample in LLaMA-Factory's ShareGPT form; raises :class:`SkipSample`."""
    systems = [m.content for m in sample.messages if m.role is Role.SYSTEM]
    if len(systems) > 1:
        raise SkipSample("several_system_messages")
    if loss_key is None and any(not m.loss for m in sample.messages if m.role is Role.ASSISTANT):
        report.lost["unsupervised_assistant_turn_without_loss_key"] += 1
    record: dict[str, Any] = {"conversations": _sharegpt_turns(sample, report, loss_key)}
    if systems:
        record["system"] = systems[0]
    tools = template_tools(sample, report.convention) or []
    record["tools"] = json.dumps([t["function"] for t in tools], ensure_ascii=False)
    return record


def export_records(
    samples: Iterable[Sample],
    target: str,
    report: ExportReport,
    *,
    loss_key: str | None = None,
    arguments: str = "string",
    with_ids: bool = False,
) -> Iterator[dict[str, Any]]:
    """The export records of ``samples``, in order; skipped samples are counted in ``report``.
    Tools follow ``report.convention``, the call convention of the whole output (set it with
    :func:`schemas.chat.call_convention` before exporting part of an output)."""
    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}; one of {', '.join(TARGETS)}")
    if loss_key is not None and loss_key not in LOSS_KEYS:
        raise ValueError(f"unknown loss key {loss_key!r}; one of {', '.join(LOSS_KEYS)}")
    for sample in samples:
        report.samples += 1
        try:
            if target == "openai":
                record = to_openai(sample, report, loss_key, arguments)
            else:
                record = to_sharegpt(sample, report, loss_key)
        except SkipSample as skip:
            report.skipped[skip.reason] += 1
            continue
        if with_ids:
            record = {"id": sample.id, **record}
        report.written += 1
        for message in sample.messages:
            native = len(native_calls(message))
            report.calls += native
            report.calls_in_text += len(message.tool_calls) - native
        yield record


def export_directory(
    directory: str,
    target: str,
    output: str,
    *,
    loss_key: str | None = None,
    arguments: str = "string",
    with_ids: bool = False,
) -> ExportReport:
    """Export the agentmill output ``directory`` to ``output`` (JSON Lines, replaced atomically).

    The directory's shards are checked against its manifest (rows and bytes) first; raises
    :class:`OutputError` when it is not an agentmill output, does not match its manifest, or
    ``output`` cannot be written."""
    from pipelines.auditing import samples_of_shards
    from pipelines.publish import is_agentmill_output
    from pipelines.verify import verify

    if not is_agentmill_output(directory):
        raise OutputError(f"{directory!r} is not an agentmill output (no manifest.json)")
    check = verify(directory, hashes=False)
    if not check.ok:
        raise OutputError(f"{directory!r} does not match its manifest: {check.summary()}")
    paths = [os.path.join(directory, shard.filename) for shard in check.manifest.output.shards]
    report = ExportReport(target=target, convention=call_convention(samples_of_shards(paths)))
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in export_records(
                samples_of_shards(paths), target, report, loss_key=loss_key, arguments=arguments, with_ids=with_ids
            ):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, output)
    except OSError as exc:
        raise OutputError(f"cannot write {output!r}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report
