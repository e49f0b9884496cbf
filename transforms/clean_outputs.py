"""Step ``clean_outputs``: Sample -> Sample, agent outputs that break the environment's protocol
fixed or taken out of the loss.

A released rollout can be successful and still teach the wrong protocol. TextCraft agents copy
the prompt's demo transcript and write the game's answer to a thought themselves
(``think: ...`` / ``OK.`` / ``> get 4 blackstone`` in one output), or send several commands in one
output of which the game runs one; WebShop agents drop the ``Thought:`` the prompt demands. A
model learns to produce whatever its supervised turns hold, so:

- **Invented lines** (``invented_lines``, per task): whole lines of an agent output that
  imitate an environment answer which carries no state (TextCraft answers every thought with
  ``OK.``) are deleted, with the blank line they leave. Only the outputs of the episode change
  (assistant turns from the first supervised one on); a turn the deletion would leave empty is
  kept as it was and, when supervised, taken out of the loss.
- **Several actions** (``action_line``, per task): a supervised output with more than one line
  matching the task's action regex (after the deletion) gets ``loss: false``; it stays in the
  conversation as context, so the observations that follow still make sense.
- **Claims rewritten** (``rewrites``, per task): a regex and its replacement, applied to the
  episode's outputs. DB-Bench's answers were written by a model that had been shown the
  expected answer, and their thoughts say so ("returned the expected answer", "The answer
  matches the provided result, so I can commit my answer now"): a check the agent cannot make.
  The claim is reworded to what the agent saw ("returned the answer", "So I can commit ...").
- **Hidden context** (``hidden_context``, per task): a supervised output that matches the
  regex while no earlier turn does (it cites "the hints" or "the evidence provided", context the
  generating model had and the conversation never shows) gets ``loss: false``.
- **Premature claim** (``premature_claim``, per task): the episode's first supervised output
  gets ``loss: false`` when it matches the regex: it claims an outcome ("Record inserted
  successfully.") before anything ran.
- **Malformed action** (``malformed_action``, per task): a supervised output (its text or its
  calls' arguments) that matches the regex gets ``loss: false``: an action the environment
  cannot run as written (DB: a table-qualified column in one pair of backticks, which MySQL
  reads as one column named "users.DisplayName"), though the released observation after it
  shows a result.
- **Failed action** (``failed_action``, per task): the supervised output right before an
  environment answer that matches the regex (an error: KG "get_relations(Apple) cannot be
  executed", MySQL "1054 (42S22): Unknown column", bash "bc: command not found") gets
  ``loss: false``: the action failed, so it is a mistake to learn from, not to learn. The
  thought and tool choice before it, and the recovery after, stay supervised.
- **Missing thought** (``missing_thought: mask``, every task): when the instructions show a
  thought line that they do not call optional (the format of the audit's
  ``format_contradiction`` check), a supervised output with an action line and no line opening
  with a demanded marker (``Think:`` under a demanded ``Thought:`` is no thought) gets ``loss: false``.
- **Wrong language** (``wrong_language: mask``, every sample): a supervised reply in another
  language than the user message it answers gets ``loss: false``, by the definition of the
  audit's ``language_mismatch`` check (same function, same exemptions: replies with ReAct
  markers or calls, translation requests, texts whose language cannot be told). glaive's
  machine-translated Chinese demos hold such exchanges: an English answer posted as the user's
  turn, "translated" by the assistant; a Chinese question answered in English.
- **Collapsed code** (``collapsed_code: mask``, every sample): a supervised reply with a fenced
  Python block whose indentation was lost (a block opener whose body is not indented:
  :mod:`transforms.quality.code_blocks`) gets ``loss: false``: it is code that does not run
  (glaive's demos flattened every line to one space).
- **Misquoted result** (``misquoted_result: mask``, every sample): a supervised answer right
  after a tool result that puts in quotation marks text no earlier message holds
  (:mod:`transforms.quality.quotes`) gets ``loss: false``: glaive's machine-translated Chinese
  demos quote a title the tool returned as 笨蛋与更笨的人 as “阿呆与阿瓜”; a model trained on
  them learns to misquote its tools.

Guarantees: only assistant text and loss flags change; roles, order, tool calls and the other
messages stay; the id is kept (same source record and derivation), the token counts are
recomputed and the step is appended to ``lineage.steps`` when anything changed, and a sample
nothing applies to passes unchanged. A sample left with no supervised turn is filtered as
``no_supervised_turn_left``. Stats: ``deleted_lines``, ``rewritten`` (replacements made),
``masked:several_actions``, ``masked:hidden_context``, ``masked:premature_claim``,
``masked:failed_action``, ``masked:malformed_action``, ``masked:missing_thought``, ``masked:wrong_language``,
``masked:collapsed_code``, ``masked:misquoted_result``, ``masked:empty_after_deletion`` and
``changed_samples``. The rules are data (``templates/quality/agent_outputs.yaml``); a config adds
tasks (``rules``) or replaces the built-in ones (``replace: true``). Pure function of the sample
and the config.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import Message, Role, Sample, ToolCall, count_tokens
from transforms.base import Filtered, RecordStep, Stat, StepConfig, StepContext, check_regexes
from transforms.quality.check import first_supervised
from transforms.quality.checks.format_contradiction import demanded_thoughts, instructions_of, skips_thought
from transforms.quality.checks.language_mismatch import LanguageOptions, judged_replies
from transforms.quality.code_blocks import has_collapsed_python
from transforms.quality.quotes import misquoted_replies

BUILTIN = "quality/agent_outputs.yaml"
REASON = "no_supervised_turn_left"
#: The audit's ``language_mismatch`` definition (its default options).
_LANGUAGE = LanguageOptions()
_BLANK_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")


class Rewrite(BaseModel):
    """A claim an agent output must not make, and what it says instead (``re.sub`` syntax)."""

    model_config = ConfigDict(extra="forbid")

    pattern: str
    replace: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return check_regexes([value])[0]


class TaskRules(BaseModel):
    """What breaks one task's protocol in an agent output."""

    model_config = ConfigDict(extra="forbid")

    #: Regexes (multi-line) of whole lines an agent must not write: they imitate an answer of
    #: the environment that carries no state, so they are deleted.
    invented_lines: list[str] = Field(default_factory=list)
    #: Regex (multi-line) of one action line; an output with more than one is taken out of the loss.
    action_line: str | None = None
    #: Claims reworded in the episode's outputs (applied in order).
    rewrites: list[Rewrite] = Field(default_factory=list)
    #: Regex (multi-line) of a reference to context the conversation never shows; a supervised
    #: output that matches it, when no earlier turn does, is taken out of the loss.
    hidden_context: str | None = None
    #: Regex (multi-line) of a claim of an outcome ("Record inserted successfully."); the
    #: episode's first supervised output, written before anything ran, that makes it is taken out
    #: of the loss.
    premature_claim: str | None = None
    #: Regex (multi-line) of an environment answer that reports a failed action (an error); the
    #: supervised output right before such an answer is taken out of the loss.
    failed_action: str | None = None
    #: Regex (multi-line) of an action the environment cannot run as written; a supervised output
    #: whose text or call arguments match it is taken out of the loss.
    malformed_action: str | None = None

    @field_validator("invented_lines")
    @classmethod
    def _lines_compile(cls, value: list[str]) -> list[str]:
        return check_regexes(value)

    @field_validator("action_line", "hidden_context", "premature_claim", "failed_action", "malformed_action")
    @classmethod
    def _one_compiles(cls, value: str | None) -> str | None:
        return None if value is None else check_regexes([value])[0]

    @property
    def invented(self) -> re.Pattern[str] | None:
        if not self.invented_lines:
            return None
        return _compiled("|".join(f"(?:{p})" for p in self.invented_lines))

    @property
    def action(self) -> re.Pattern[str] | None:
        return None if self.action_line is None else _compiled(self.action_line)

    @property
    def hidden(self) -> re.Pattern[str] | None:
        return None if self.hidden_context is None else _compiled(self.hidden_context)

    @property
    def premature(self) -> re.Pattern[str] | None:
        return None if self.premature_claim is None else _compiled(self.premature_claim)

    @property
    def failed(self) -> re.Pattern[str] | None:
        return None if self.failed_action is None else _compiled(self.failed_action)

    @property
    def malformed(self) -> re.Pattern[str] | None:
        return None if self.malformed_action is None else _compiled(self.malformed_action)

    def rewrite(self, text: str) -> tuple[str, int]:
        """``text`` with every rewrite applied, and how many replacements were made."""
        made = 0
        for rule in self.rewrites:
            text, count = _compiled(rule.pattern).subn(rule.replace, text)
            made += count
        return text, made


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.MULTILINE)


@functools.cache
def builtin_rules() -> dict[str, TaskRules]:
    from transforms.phrasing import builtin_text

    data = yaml.safe_load(builtin_text(BUILTIN)) or {}
    return {task: TaskRules.model_validate(rules) for task, rules in data.items()}


class CleanOutputsConfig(StepConfig):
    """Config of ``clean_outputs``."""

    rules: dict[str, TaskRules] = Field(default_factory=dict)
    replace: bool = False
    missing_thought: Literal["mask", "keep"] = "mask"
    #: ``mask``: a supervised reply in another language than its query leaves the loss.
    wrong_language: Literal["mask", "keep"] = "mask"
    #: ``mask``: a supervised reply with a fenced Python block whose indentation was lost leaves the loss.
    collapsed_code: Literal["mask", "keep"] = "mask"
    #: ``mask``: a supervised answer after a tool result that quotes text nobody wrote leaves the loss.
    misquoted_result: Literal["mask", "keep"] = "mask"

    @model_validator(mode="after")
    def _known(self) -> CleanOutputsConfig:
        self.task_rules()  # the built-in data parses
        return self

    def task_rules(self) -> dict[str, TaskRules]:
        """Task -> rules: the built-in ones updated with ``rules`` (or only ``rules``)."""
        return dict(self.rules) if self.replace else {**builtin_rules(), **self.rules}


def hidden_citations(pattern: re.Pattern[str], turns: Sequence[tuple[bool, str]]) -> set[int]:
    """Indexes of the supervised turns (``(supervised, text)`` pairs) that match ``pattern`` while
    no earlier turn that is not a supervised one does: they cite context never shown."""
    found: set[int] = set()
    shown = False
    for index, (supervised, text) in enumerate(turns):
        if not supervised:
            shown = shown or pattern.search(text) is not None
        elif not shown and pattern.search(text):
            found.add(index)
    return found


def premature_claim(pattern: re.Pattern[str], turns: Sequence[tuple[bool, str]]) -> int | None:
    """Index of the first supervised turn (``(supervised, text)`` pairs) when it matches
    ``pattern``: the episode's first output claims an outcome before anything ran."""
    first = next((i for i, (supervised, _) in enumerate(turns) if supervised), None)
    return first if first is not None and pattern.search(turns[first][1]) else None


def failed_actions(pattern: re.Pattern[str], messages: Sequence[Message]) -> set[int]:
    """Indexes of the supervised assistant messages whose next message is an environment answer
    (a user or tool message) that matches ``pattern``: the action they sent failed."""
    found: set[int] = set()
    for index in range(len(messages) - 1):
        message, answer = messages[index], messages[index + 1]
        if (
            message.role is Role.ASSISTANT
            and message.loss
            and answer.role in (Role.USER, Role.TOOL)
            and pattern.search(answer.content)
        ):
            found.add(index)
    return found


def action_match(pattern: re.Pattern[str], text: str, calls: Sequence[ToolCall]) -> re.Match[str] | None:
    """The first match of ``pattern`` in an output's text or one of its calls' arguments (JSON)."""
    return next((m for m in map(pattern.search, [text, *(c.arguments_json() for c in calls)]) if m), None)


def delete_invented(text: str, pattern: re.Pattern[str]) -> tuple[str, int]:
    """``text`` without the whole lines ``pattern`` matches (runs of blank lines they leave
    become one blank line, and the ends are trimmed of blank lines), and how many were deleted."""
    lines = text.split("\n")
    kept = [line for line in lines if not pattern.fullmatch(line)]
    deleted = len(lines) - len(kept)
    if not deleted:
        return text, 0
    return _BLANK_RUN.sub("\n\n", "\n".join(kept)).strip("\n"), deleted


def clean(sample: Sample, config: CleanOutputsConfig, rules: dict[str, TaskRules]) -> tuple[Sample, Counter]:
    """The cleaned sample (the same object when nothing applies) and the stats of what changed."""
    stats: Counter = Counter()
    start = first_supervised(sample)
    if start is None:
        return sample, stats
    task = rules.get(sample.lineage.task or "")
    thought = demanded_thoughts(instructions_of(sample, start)) if config.missing_thought == "mask" else frozenset()
    foreign = (
        {r.index for r in judged_replies(sample, _LANGUAGE) if r.mismatched}
        if config.wrong_language == "mask"
        else set()
    )
    broken = (
        {i for i, m in enumerate(sample.messages) if m.loss and has_collapsed_python(m.content)}
        if config.collapsed_code == "mask"
        else set()
    )
    misquoted = set(misquoted_replies(sample)) if config.misquoted_result == "mask" else set()
    if task is None and not thought and not foreign and not broken and not misquoted:
        return sample, stats
    messages: list[Message] = list(sample.messages)
    turns = [(m.loss, m.content) for m in messages]
    hidden = task.hidden if task is not None else None
    citing = set() if hidden is None else hidden_citations(hidden, turns)
    premature = task.premature if task is not None else None
    claiming = None if premature is None else premature_claim(premature, turns)
    failing = set() if task is None or task.failed is None else failed_actions(task.failed, messages)
    malformed = task.malformed if task is not None else None
    for index in range(start, len(messages)):
        message = messages[index]
        if message.role is not Role.ASSISTANT:
            continue
        update: dict[str, Any] = {}
        text = message.content
        if task is not None and task.invented is not None:
            text, deleted = delete_invented(text, task.invented)
            if deleted and text.strip():
                update["content"] = text
                stats["deleted_lines"] += deleted
            elif deleted and message.loss:
                text = message.content
                update["loss"] = False
                stats["masked:empty_after_deletion"] += 1
        if task is not None and task.rewrites:
            text, made = task.rewrite(text)
            if made:
                update["content"] = text
                stats["rewritten"] += made
        if message.loss and "loss" not in update:
            if task is not None and task.action is not None and len(task.action.findall(text)) > 1:
                update["loss"] = False
                stats["masked:several_actions"] += 1
            elif index in citing:
                update["loss"] = False
                stats["masked:hidden_context"] += 1
            elif index == claiming:
                update["loss"] = False
                stats["masked:premature_claim"] += 1
            elif index in failing:
                update["loss"] = False
                stats["masked:failed_action"] += 1
            elif malformed is not None and action_match(malformed, text, message.tool_calls):
                update["loss"] = False
                stats["masked:malformed_action"] += 1
            elif thought and skips_thought(text, thought):
                update["loss"] = False
                stats["masked:missing_thought"] += 1
            elif index in foreign:
                update["loss"] = False
                stats["masked:wrong_language"] += 1
            elif index in broken:
                update["loss"] = False
                stats["masked:collapsed_code"] += 1
            elif index in misquoted:
                update["loss"] = False
                stats["masked:misquoted_result"] += 1
        if update:
            messages[index] = message.model_copy(update=update)
    if not stats:
        return sample, stats
    stats["changed_samples"] = 1
    return sample.model_copy(update={"messages": messages, "counts": count_tokens(messages)}), stats


class CleanOutputsFn:
    """Picklable processor (see the module docstring)."""

    def __init__(self, config: CleanOutputsConfig, context: StepContext) -> None:
        self.config = config
        self.step_id = context.step_id
        self.rules: dict[str, TaskRules] | None = None

    def setup(self) -> None:
        self.rules = self.config.task_rules()

    def __call__(self, sample: Sample) -> Iterator[Any]:
        if self.rules is None:
            self.setup()
        assert self.rules is not None
        cleaned, stats = clean(sample, self.config, self.rules)
        for name, value in sorted(stats.items()):
            yield Stat(name, value)
        if cleaned is sample:
            yield sample
            return
        if not any(m.loss for m in cleaned.messages):
            masked = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("masked:")}
            yield Filtered(REASON, f"every supervised turn was taken out of the loss: {masked}")
            return
        lineage = cleaned.lineage.model_copy(update={"steps": [*cleaned.lineage.steps, self.step_id]})
        yield cleaned.model_copy(update={"lineage": lineage})


class CleanOutputs(RecordStep):
    """Deletes invented environment lines from agent outputs and masks outputs that hold several
    actions or skip a demanded thought (see the module docstring)."""

    type_name = "clean_outputs"
    config_model = CleanOutputsConfig
    input_type = Sample
    output_type = Sample

    def processor(self) -> CleanOutputsFn:
        return CleanOutputsFn(self.config, self.context)  # type: ignore[arg-type]

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        return {
            "in": ledger.in_,
            "changed_samples": ledger.stats.get("changed_samples", 0),
            "deleted_lines": ledger.stats.get("deleted_lines", 0),
            "rewritten": ledger.stats.get("rewritten", 0),
            "masked": {k.split(":", 1)[1]: v for k, v in sorted(ledger.stats.items()) if k.startswith("masked:")},
            "dropped": ledger.filtered.get(REASON, 0),
        }


__all__ = [
    "CleanOutputs",
    "CleanOutputsConfig",
    "Rewrite",
    "TaskRules",
    "action_match",
    "builtin_rules",
    "clean",
    "delete_invented",
    "hidden_citations",
]
