"""Shards -> token ids with labels from the per-message loss flags.

Guarantees of :func:`tokenize_sample`:

- the text is the chat template's rendering of the sample (``train.templates``), tokenized once as a
  whole (``add_special_tokens=False``; templates emit BOS themselves), so tokens match inference;
- ``labels[t] == input_ids[t]`` exactly for tokens whose first character lies in the supervised span
  of a ``loss=True`` message (its content and its end-of-turn marker / EOS), ``-100`` elsewhere;
- ``groups[t]`` is the loss group of a supervised token: the message's capability tag, or for an
  untagged message the sample's kind (``agent``, ``general``, ...); ``-1`` for context tokens;
- messages after the last supervised one are dropped (they could only be context for nothing);
- a sample longer than ``max_seq_len`` is cut at the right; a sample left with no supervised token
  (all truncated away, or none to begin with) is returned as :class:`Dropped` with a reason, never
  trained on silently;
- tools and calls are rendered natively where the template can (``schemas.chat``): the sample's
  ``tools`` go to the template (unless the sample spells its calls in text, with its own tool
  prompt), an assistant message's structured calls become its ``tool_calls`` (calls a template
  cannot render are appended to the content as JSON lines and counted);
- round-trip gate (``round_trip=True``): every supervised span must parse back, with the
  template's response template, to its message's content and calls; a sample with a span that
  does not is :class:`Dropped` as ``round_trip`` with the message and the difference.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.arrow import ArrowCodec
from schemas.chat import call_counts, convention_of, conversation, native_calls, template_tools, tool_schemas
from schemas.integrity import require_intact
from schemas.sample import Capability, Sample
from train.templates import ChatTemplate, TemplateError, render_with_spans, round_trip

IGNORE_INDEX = -100
KINDS = ("agent", "general", "negative", "instruction")
# Loss groups: the capability tags, then sample kinds for untagged tokens ("general" is both).
GROUPS: tuple[str, ...] = tuple(dict.fromkeys([*(c.value for c in Capability), *KINDS, "untagged"]))
GROUP_INDEX = {name: i for i, name in enumerate(GROUPS)}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedSample:
    """One sample as tokens. ``n_supervised`` counts supervised tokens that are predicted (t >= 1)."""

    id: str
    kind: str
    input_ids: list[int]
    labels: list[int]
    groups: list[int]
    n_supervised: int
    truncated: bool = False
    straddling_tokens: int = 0
    round_trip_turns: int = 0
    calls_as_text: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Dropped:
    """A sample not trained on, with the reason (``truncated_all_supervised``, ``no_supervised_tokens``,
    ``template_error``, ``round_trip``)."""

    id: str
    reason: str
    detail: str = ""


@dataclass
class TokenizeReport:
    """What tokenization kept, cut and dropped (written to ``OUT/data_report.json``)."""

    samples_in: int = 0
    samples_kept: int = 0
    samples_truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)
    tokens: int = 0
    supervised_tokens: int = 0
    straddling_tokens: int = 0
    supervised_by_group: Counter = field(default_factory=Counter)
    round_trip_turns: int = 0
    calls_as_text: int = 0
    call_convention: str = "none"
    samples_calling: tuple[int, int] = (0, 0)

    def add(self, result: TokenizedSample | Dropped) -> None:
        self.samples_in += 1
        if isinstance(result, Dropped):
            self.dropped[result.reason] += 1
            examples = self.dropped_examples.setdefault(result.reason, [])
            if len(examples) < 20:
                examples.append(result.id if not result.detail else f"{result.id}: {result.detail}")
            return
        self.samples_kept += 1
        self.samples_truncated += int(result.truncated)
        self.tokens += len(result)
        self.supervised_tokens += result.n_supervised
        self.straddling_tokens += result.straddling_tokens
        self.round_trip_turns += result.round_trip_turns
        self.calls_as_text += result.calls_as_text
        for g, lab in zip(result.groups[1:], result.labels[1:], strict=True):
            if lab != IGNORE_INDEX:
                self.supervised_by_group[GROUPS[g]] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples_in": self.samples_in,
            "samples_kept": self.samples_kept,
            "samples_truncated": self.samples_truncated,
            "dropped": dict(self.dropped),
            "dropped_examples": self.dropped_examples,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised_tokens,
            "straddling_tokens": self.straddling_tokens,
            "supervised_by_group": dict(self.supervised_by_group),
            "round_trip": {"turns_checked": self.round_trip_turns, "failed_samples": self.dropped["round_trip"]},
            "calls_as_text": self.calls_as_text,
            "call_convention": self.call_convention,
            "samples_calling": {"native": self.samples_calling[0], "text": self.samples_calling[1]},
        }


def strict_problem(report: TokenizeReport, template_name: str) -> str | None:
    """Why ``--strict`` refuses to train on this data (samples that fail the round trip), or ``None``."""
    failed = report.dropped.get("round_trip", 0)
    if not failed:
        return None
    return (
        f"{failed} of {report.samples_in} samples fail the round trip with template {template_name!r}, "
        f"e.g. {report.dropped_examples['round_trip'][0]}"
    )


def load_samples(data_dirs: Sequence[str]) -> list[Sample]:
    """Every sample in the shards of the pipeline output dirs, in directory then row order.

    Each directory is first checked against its ``manifest.json`` (every shard's rows, bytes and
    sha256, see :mod:`schemas.integrity`): a missing, cut or altered shard raises
    :class:`~schemas.integrity.IntegrityError` naming the directory and the shards, so training
    never runs on part of the data. The check reads each shard once more than loading does.
    """
    import datasets

    codec = ArrowCodec(Sample)
    samples: list[Sample] = []
    for data_dir in data_dirs:
        require_intact(str(data_dir))
        dataset = datasets.load_from_disk(str(data_dir))
        refuse_old_shards(dataset.data.schema, str(data_dir))
        samples.extend(codec.from_row(row) for row in dataset)  # type: ignore[misc]
    return samples


class OldShardError(ValueError):
    """Shards written by an agentmill older than the structured ``tool_calls`` messages."""


def refuse_old_shards(schema: Any, where: str) -> None:
    """Raise :class:`OldShardError` when the shard schema's messages have the old single
    ``tool_call`` column (before parallel calls and tool-result links): their calls cannot be
    rendered natively, so they are refused rather than trained without their calls."""
    if "messages" not in schema.names:
        return
    item = schema.field("messages").type.value_type
    names = {item.field(i).name for i in range(item.num_fields)}
    if "tool_call" in names and "tool_calls" not in names:
        raise OldShardError(
            f"{where}: these shards were written by an older agentmill (messages have a single "
            "'tool_call' column, not 'tool_calls'); rebuild them with `agentmill run` on the same spec"
        )


def group_of(capability: Capability | str | None, kind: str) -> int:
    """Loss group index of a supervised message: its capability, else its sample kind."""
    if capability is not None:
        return GROUP_INDEX[Capability(capability).value]
    return GROUP_INDEX.get(kind, GROUP_INDEX["untagged"])


def tools_schema(sample: Sample) -> list[dict[str, Any]]:
    """The sample's tools as OpenAI-style function schemas (for templates that render ``tools``)."""
    return tool_schemas(sample.tools)


def chat_messages(
    sample: Sample, system_prompt: str | None = None, native_calls: bool = True
) -> tuple[list[dict[str, Any]], list[bool], list[int]]:
    """Messages as template dicts (:func:`schemas.chat.conversation`), their loss flags and loss
    groups (trailing context dropped).

    ``system_prompt`` is put first when the sample has no system message; ``native_calls`` passes
    structured calls as ``tool_calls`` (else they are JSON lines in the content).
    """
    dicts, flags, index = conversation(sample, system_prompt, native_calls)
    groups = [
        group_of(sample.messages[i].capability, sample.kind) if i >= 0 and sample.messages[i].loss else -1
        for i in index
    ]
    return dicts, flags, groups


def labels_from_spans(
    offsets: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int, int]],
    input_ids: Sequence[int],
    span_groups: Sequence[int],
) -> tuple[list[int], list[int], int]:
    """Labels, groups, and the number of tokens straddling a span start.

    A token is supervised iff its first character lies inside a span. A token that begins before a
    span and ends inside it (the tokenizer merged the prompt's last characters with the answer's
    first ones) stays context; such tokens are counted so a report can flag the template/tokenizer.
    """
    labels = [IGNORE_INDEX] * len(input_ids)
    groups = [-1] * len(input_ids)
    straddling = 0
    j = 0
    for t, (start, end) in enumerate(offsets):
        if end <= start:  # zero-width (e.g. added by a post-processor): never supervised
            continue
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        if j < len(spans) and spans[j][0] <= start < spans[j][1]:
            labels[t] = int(input_ids[t])
            groups[t] = span_groups[j]
        elif j < len(spans) and start < spans[j][0] < end:
            straddling += 1
    return labels, groups, straddling


def tokenize_sample(
    sample: Sample,
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int,
    system_prompt: str | None = None,
    render_tools: bool = True,
    check_round_trip: bool = False,
    convention: str = "native",
) -> TokenizedSample | Dropped:
    """Render, tokenize and label one sample (guarantees in the module docstring).

    ``render_tools``: give the template the sample's tools and structured calls when it renders
    them. ``check_round_trip``: run the round-trip gate (the template needs a response template).
    ``convention``: the data set's :func:`schemas.chat.call_convention` (``text``: no tool block).
    """
    native = render_tools and template.native_calls
    messages, flags, groups = chat_messages(sample, system_prompt, native)
    if not any(flags):
        return Dropped(sample.id, "no_supervised_tokens", "no message has loss=true")
    tools = template_tools(sample, convention) if render_tools and template.renders_tools else None
    try:
        text, spans = render_with_spans(template, tokenizer, messages, flags, tools)
        failures = round_trip(template, text, spans, messages, tools) if check_round_trip else []
    except TemplateError as exc:
        return Dropped(sample.id, "template_error", str(exc))
    if failures:
        detail = "; ".join(f"message {i}: {reason}" for i, reason in failures)
        return Dropped(sample.id, "round_trip", detail)
    flattened = 0 if native else sum(1 for m in sample.messages if native_calls(m))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    span_groups = [groups[i] for *_, i in spans]
    labels, token_groups, straddling = labels_from_spans(encoding["offset_mapping"], spans, input_ids, span_groups)
    supervised_before = sum(1 for lab in labels[1:] if lab != IGNORE_INDEX)
    truncated = len(input_ids) > max_seq_len
    if truncated:
        input_ids, labels, token_groups = input_ids[:max_seq_len], labels[:max_seq_len], token_groups[:max_seq_len]
    n_supervised = sum(1 for lab in labels[1:] if lab != IGNORE_INDEX)
    if n_supervised == 0:
        if supervised_before == 0:
            return Dropped(sample.id, "no_supervised_tokens", "the supervised messages produced no predicted token")
        return Dropped(
            sample.id,
            "truncated_all_supervised",
            f"{supervised_before} supervised tokens beyond max_seq_len={max_seq_len}",
        )
    return TokenizedSample(
        sample.id,
        sample.kind,
        input_ids,
        labels,
        token_groups,
        n_supervised,
        truncated,
        straddling,
        len(spans) if check_round_trip else 0,
        flattened,
    )


def tokenize_all(
    samples: Iterable[Sample],
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int,
    system_prompt: str | None = None,
    render_tools: bool = True,
    check_round_trip: bool = False,
) -> tuple[list[TokenizedSample], TokenizeReport]:
    """Tokenize every sample; return the kept ones (input order) and the report.

    The first 20 drops per reason are logged one by one; all are counted in the report. The data
    set's call convention (``report.call_convention``) decides whether call-free samples show the
    template's tool block (not when every call is spelled in text).
    """
    samples = list(samples)
    native, text = call_counts(samples)
    report = TokenizeReport(call_convention=convention_of(native, text), samples_calling=(native, text))
    kept: list[TokenizedSample] = []
    for sample in samples:
        result = tokenize_sample(
            sample,
            tokenizer,
            template,
            max_seq_len,
            system_prompt,
            render_tools,
            check_round_trip,
            report.call_convention,
        )
        report.add(result)
        if isinstance(result, Dropped):
            if report.dropped[result.reason] <= 20:
                log.warning("sample %s not trained on: %s %s", result.id, result.reason, result.detail)
        else:
            kept.append(result)
    return kept, report
