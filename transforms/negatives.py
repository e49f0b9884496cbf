"""Step ``negatives``: samples that teach a model not to call tools when it should not.

Agent-FLAN's four cases are {tools given, no tools} x {query needs a tool, normal query}; only
"tools given + needs a tool" should produce a call (that positive case is the aligned agent
data). This step builds the others, each with a plain-text target:

- ``no_tools``: a query with no tools in the prompt;
- ``irrelevant_tools``: a query with tools that do not fit it in the system prompt (the
  paper's case);
- ``general_with_tools``: a whole general conversation (its real answers kept) with tools from
  the pool in the system prompt (available, not in the default split).

Queries are things people ask, of two kinds (``metadata.query``):

- ``normal``: a request the source answered in plain text (general chat, glaive's plain
  answers, requests whose tool only computes what the assistant can work out itself). The
  target is that real answer.
- ``needs_tool``: a request whose source agent called a tool (glaive, ToolBench, AgentInstruct
  DB/KG/OS questions). The target says what is missing and still helps: from the phrase book of
  the query's language (``templates/negatives/default.yaml``, keyed to the needed capability and
  the request's details or the code the source ran), or from the ``model`` responder, or from the
  ``dataset`` responder: the user's own answers (``answers:`` file, matched by query text) or,
  without that file, the source's own decline.

A query whose source looked something up that a knowledgeable assistant often knows itself
(``lookup_tools``: books, films, recipes, an encyclopedia) is filtered ``knowledge_lookup`` with
the template and dataset responders: a refusal ("I can't reach a book catalogue") would teach to
refuse what it can answer, and the source's answer reports the tool's results (glaive's invented
ones included: ISBNs, a novel "by John Doe"), which answered without the tool teach making them
up. The model responder answers it as the model would.

Environment observations are never queries: tasks in ``exclude_tasks`` (ALFWorld, WebShop,
Mind2Web by default) and turns matching the observation patterns of
``templates/negatives/queries.yaml`` are filtered ``excluded_task`` / ``environment_observation``.

Guarantees: the answer is in the query's language (a real answer in another language is
filtered ``answer_language_mismatch``; a needs-tool query in a language without a phrase book is
filtered ``no_phrase_book_language``); answers never hold a ReAct marker, nor a fenced Python
block whose indentation was lost (``collapsed_code_in_answer``: code that does not run). Irrelevant tools are
chosen by a documented check (:func:`pick_irrelevant_tools`). Exact counts per (case, query
kind): ``count`` split by ``shares`` (largest remainder), each agent case split by
``needs_tool_share``, drawn by keyed-hash rankings of the eligible inputs (count, then select).
Every input trajectory is emitted once or filtered with a reason; each negative carries its
case in ``lineage.derivation`` (``negative:<case>``) and ``metadata["case"]``.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import math
import re
from collections.abc import Iterable, Iterator
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import Message, Role, Sample, ToolCall, ToolSpec, Trajectory, count_tokens
from transforms.align import SLOT_VARIABLES, _tool_view
from transforms.base import (
    LEDGER,
    MAIN,
    REJECTED,
    Filtered,
    RecordError,
    Stat,
    Step,
    StepConfig,
    StepContext,
    check_regexes,
)
from transforms.phrasing import Book, PhraseBook, PhrasingError, builtin_text, load_book, parse_book, read_text
from transforms.quality import language
from transforms.quality.code_blocks import has_collapsed_python
from transforms.quality.language import detect_language
from transforms.react import StepParseError, has_markers, parse_turn
from transforms.samples import sample_of
from transforms.sampling import keyed_hash, rank_key

if TYPE_CHECKING:
    import apache_beam as beam

Case = Literal["no_tools", "irrelevant_tools", "general_with_tools"]
QueryKind = Literal["needs_tool", "normal"]
AGENT_CASES: tuple[Case, ...] = ("no_tools", "irrelevant_tools")
QUERY_KINDS: tuple[QueryKind, ...] = ("needs_tool", "normal")
#: Slots each language of the phrase book must have, with example variables (checked at load).
EXAMPLE_DETAILS = [{"name": "city", "value": "Oslo"}, {"name": "", "value": "today"}]
LANGUAGE_SLOTS: dict[str, dict[str, Any]] = {
    "capability": {"tool": "get_weather", "description": "Get the weather", "task": ""},
    "help_code": {"capability": "run SQL queries", "code": "SELECT 1;", "code_language": "sql"},
    "help_details": {"capability": "get the weather", "details": EXAMPLE_DETAILS},
    "help_general": {"capability": "get the weather"},
    "no_tools": {"capability": "get the weather", "help": "Ask me.", "query": "Weather in Oslo?"},
    "irrelevant_tools": {
        "capability": "get the weather",
        "help": "Ask me.",
        "query": "Weather in Oslo?",
        "tool_names": "a, b",
    },
}
#: Arguments that hold code the user can run themselves, by key.
CODE_KEYS = {"query": "sql", "script": "bash"}
#: Argument keys the parser invents for bare values of text commands (never shown as details).
BARE_KEYS = {"input", "target"}
_HAN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
STOPWORDS = frozenset(
    [
        "about",
        "after",
        "also",
        "been",
        "before",
        "being",
        "could",
        "does",
        "doing",
        "from",
        "have",
        "here",
        "into",
        "just",
        "like",
        "made",
        "make",
        "more",
        "most",
        "much",
        "need",
        "only",
        "other",
        "over",
        "please",
        "some",
        "such",
        "than",
        "that",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "very",
        "want",
        "what",
        "when",
        "where",
        "which",
        "while",
        "with",
        "would",
        "your",
        "yours",
        "function",
        "tool",
        "tools",
        "data",
        "information",
        "given",
        "using",
        "used",
        "based",
        "return",
        "returns",
        "value",
        "values",
        "number",
        "string",
        "object",
        "specified",
        "provided",
    ]
)


# --- configuration and rules ----------------------------------------------------------------------


class NegativesConfig(StepConfig):
    """Config of the ``negatives`` step (see the module docstring and docs/transforms/negatives.md)."""

    agent_inputs: list[str] = Field(min_length=1)
    general_inputs: list[str] = Field(default_factory=list)
    count: int = Field(761, ge=0)
    shares: dict[Case, float] = Field(default_factory=lambda: {"no_tools": 0.5, "irrelevant_tools": 0.5})
    needs_tool_share: float = Field(0.5, ge=0.0, le=1.0)
    responder: Literal["dataset", "template", "model"] = "template"
    answers: str | None = None
    templates: str | None = None
    query_rules: str | None = None
    exclude_tasks: list[str] = Field(default_factory=lambda: ["alfworld", "webshop", "mind2web"])
    model: str | None = None
    max_new_tokens: int = Field(128, ge=1)
    tools_per_sample: int = Field(3, ge=1)
    same_language_tools: bool = True
    #: How declared tools reach the model: ``agent_flan`` describes them in a system message (the
    #: align step's ``system_tools`` slot) as well as in ``sample.tools``; ``native`` declares
    #: them in ``sample.tools`` only, for a chat template to render, as ``align``'s native style
    #: does (otherwise only the negatives would describe tools in words, and a model would learn
    #: that tools described in words are never called).
    style: Literal["agent_flan", "native"] = "agent_flan"

    @model_validator(mode="after")
    def _check(self) -> NegativesConfig:
        if any(v < 0 for v in self.shares.values()) or not math.isclose(sum(self.shares.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must be non-negative and sum to 1, got {self.shares}")
        if self.shares.get("general_with_tools", 0) > 0 and not self.general_inputs:
            raise ValueError("case 'general_with_tools' needs 'general_inputs'")
        if self.responder == "model" and not self.model:
            raise ValueError("responder 'model' needs 'model': a local model directory")
        if self.answers and self.responder != "dataset":
            raise ValueError("'answers' (a file of your answers) goes with responder 'dataset'")
        return self

    def quotas(self) -> dict[str, int]:
        """``count`` split by ``shares`` with the largest-remainder method (sums to ``count``)."""
        return largest_remainder(self.count, dict(sorted(self.shares.items())))

    def cell_quotas(self) -> dict[tuple[str, str], int]:
        """Quota per (case, query kind): each agent case's quota split by ``needs_tool_share``
        (largest remainder, ties to ``needs_tool``); ``general_with_tools`` is all ``normal``.
        The cells of a case add up to the case's quota."""
        cells: dict[tuple[str, str], int] = {}
        for case, quota in self.quotas().items():
            if case == "general_with_tools":
                cells[(case, "normal")] = quota
                continue
            split = largest_remainder(
                quota, {"needs_tool": self.needs_tool_share, "normal": 1.0 - self.needs_tool_share}
            )
            for kind, n in split.items():
                cells[(case, kind)] = n
        return cells


def largest_remainder(total: int, shares: dict[str, float]) -> dict[str, int]:
    """``total`` split by ``shares`` (summing to 1): floors, then the largest remainders get the
    rest (ties by key order). The parts add up to ``total``."""
    raw = {key: total * share for key, share in shares.items()}
    parts = {key: math.floor(v) for key, v in raw.items()}
    left = total - sum(parts.values())
    for key in sorted(raw, key=lambda k: (-(raw[k] - parts[k]), k))[:left]:
        parts[key] += 1
    return parts


class QueryRules(BaseModel):
    """How queries are read (``templates/negatives/queries.yaml``; a user's ``query_rules:`` file
    replaces the keys it defines). Every pattern is compiled when the rules load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observation_patterns: list[str]
    query_patterns: list[str]
    answerable_tools: list[str]
    answerable_tasks: list[str] = Field(default_factory=list)
    decline_patterns: list[str]
    description_patterns: list[str]
    related_words: dict[str, list[str]]
    #: An environment reply that matches one is a failed call (its code is not handed to the user).
    error_patterns: list[str] = Field(default_factory=list)
    #: A reply that matches one asks the user for details (of a call it will make).
    details_patterns: list[str] = Field(default_factory=list)
    #: Tools of a source's calling protocol (ToolBench's ``Finish``, which its prompt says to call
    #: at the end of every attempt): never drawn as irrelevant tools, since a prompt declaring one
    #: would contradict the agent data that must end with it.
    protocol_tools: list[str] = Field(default_factory=list)
    #: Tools that look up what a knowledgeable assistant often knows (books, films, recipes, an
    #: encyclopedia): a query whose first call is one is neither refused nor answered with the
    #: source's answer (see ``knowledge_lookup`` in the module docstring).
    lookup_tools: list[str] = Field(default_factory=list)
    #: Code a source ran that cannot run as written (a MySQL column qualified inside one pair of
    #: backticks): a needs-tool query whose calls hold it is not answered with that code as help.
    broken_code_patterns: list[str] = Field(default_factory=list)

    @field_validator(
        "observation_patterns",
        "query_patterns",
        "answerable_tools",
        "decline_patterns",
        "error_patterns",
        "details_patterns",
        "protocol_tools",
        "lookup_tools",
        "broken_code_patterns",
    )
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return check_regexes(patterns)

    @field_validator("query_patterns")
    @classmethod
    def _has_query_group(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if "query" not in re.compile(pattern).groupindex:
                raise ValueError(f"query pattern {pattern!r} has no named group 'query'")
        return patterns

    @field_validator("description_patterns")
    @classmethod
    def _has_description_group(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                compiled = re.compile(pattern, re.DOTALL)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
            if "description" not in compiled.groupindex:
                raise ValueError(f"description pattern {pattern!r} has no named group 'description'")
        return patterns

    @cached_property
    def _observation(self) -> list[re.Pattern[str]]:
        return [re.compile(p, re.MULTILINE) for p in self.observation_patterns]

    @cached_property
    def _query(self) -> list[re.Pattern[str]]:
        return [re.compile(p, re.DOTALL) for p in self.query_patterns]

    @cached_property
    def _answerable(self) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in self.answerable_tools]

    @cached_property
    def _decline(self) -> list[re.Pattern[str]]:
        return [re.compile(p, re.DOTALL) for p in self.decline_patterns]

    @cached_property
    def _description(self) -> list[re.Pattern[str]]:
        return [re.compile(p, re.DOTALL) for p in self.description_patterns]

    @cached_property
    def _error(self) -> list[re.Pattern[str]]:
        return [re.compile(p, re.MULTILINE) for p in self.error_patterns]

    def is_observation(self, text: str) -> bool:
        return any(p.search(text) for p in self._observation)

    def is_error(self, text: str) -> bool:
        """Whether an environment's reply to a call says the call failed."""
        return any(p.search(text) for p in self._error)

    @cached_property
    def _details(self) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in self.details_patterns]

    def asks_details(self, reply: str) -> bool:
        """Whether an assistant reply asks the user for details."""
        return any(p.search(reply) for p in self._details)

    def request(self, text: str) -> str:
        """The user's request inside a task turn (the first query pattern that matches)."""
        for pattern in self._query:
            match = pattern.search(text)
            if match and match.group("query").strip():
                return match.group("query").strip()
        return text.strip()

    def answerable(self, tool: str) -> bool:
        return any(p.search(tool) for p in self._answerable)

    @cached_property
    def _protocol(self) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in self.protocol_tools]

    @cached_property
    def _lookup(self) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in self.lookup_tools]

    @cached_property
    def _broken_code(self) -> list[re.Pattern[str]]:
        return [re.compile(p) for p in self.broken_code_patterns]

    def protocol(self, tool: str) -> bool:
        return any(p.search(tool) for p in self._protocol)

    def lookup(self, tool: str) -> bool:
        return any(p.search(tool) for p in self._lookup)

    def broken_code(self, call: ToolCall) -> bool:
        arguments = call.arguments_json()
        return any(p.search(arguments) for p in self._broken_code)

    def declines(self, reply: str) -> bool:
        return any(p.search(reply) for p in self._decline)

    def description(self, text: str) -> str:
        for pattern in self._description:
            match = pattern.search(text)
            if match:
                return match.group("description").strip()
        return text.strip()

    def words_of(self, tool: str) -> frozenset[str]:
        return frozenset(w.lower() for w in self.related_words.get(tool, []))


def load_rules(user_path: str | None, base_dir: str) -> QueryRules:
    """The built-in query rules with a user's keys laid over them; a bad file fails early."""
    origin = "templates/negatives/queries.yaml"
    data = yaml.safe_load(builtin_text("negatives/queries.yaml"))
    if user_path:
        origin = user_path
        user = yaml.safe_load(read_text(user_path, base_dir))
        if not isinstance(user, dict):
            raise PhrasingError(f"{user_path}: expected a mapping of rule name -> value")
        data.update(user)
    try:
        return QueryRules.model_validate(data)
    except ValueError as exc:
        raise PhrasingError(f"{origin}: {exc}") from None


def book_languages(book: dict[str, list[str]]) -> set[str]:
    """Languages with every slot of :data:`LANGUAGE_SLOTS` in ``book``."""
    prefixes = {slot.split(".", 1)[0] for slot in book if "." in slot}
    return {lang for lang in prefixes if all(f"{lang}.{slot}" in book for slot in LANGUAGE_SLOTS)}


def load_answer_book(user_path: str | None, base_dir: str) -> dict[str, list[str]]:
    """The built-in phrase book with a user's slots laid over it; a user's file may add a
    language (all of its slots). Every variant is rendered once with example variables."""
    builtin = parse_book(builtin_text("negatives/default.yaml"), "templates/negatives/default.yaml")
    user = parse_book(read_text(user_path, base_dir), user_path) if user_path else {}
    languages = book_languages({**builtin, **user})
    incomplete = {s.split(".", 1)[0] for s in user if "." in s} - languages
    if incomplete:
        raise PhrasingError(
            f"{user_path}: language(s) {', '.join(sorted(incomplete))} lack slots; each language needs "
            f"{', '.join(sorted(LANGUAGE_SLOTS))}"
        )
    variables = {f"{lang}.{slot}": values for lang in languages for slot, values in LANGUAGE_SLOTS.items()}
    unknown = set(user) - set(variables)
    if unknown:
        raise PhrasingError(f"{user_path}: unknown slots {', '.join(sorted(unknown))}; slots are <language>.<slot>")
    builtin = Book({slot: v for slot, v in builtin.items() if slot in variables}, builtin.origins)
    return load_book_from(builtin | user, variables)


def load_book_from(book: dict[str, list[str]], variables: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    PhraseBook(book, samples=variables)
    return book


def answer_key(query: str) -> str:
    """How a supplied answer is matched to a query: whitespace collapsed, case folded."""
    return " ".join(query.split()).casefold()


def load_answers(path: str, base_dir: str) -> dict[str, str]:
    """A user's answers for the ``dataset`` responder: JSON Lines or a JSON list of
    ``{"query": ..., "answer": ...}`` objects, keyed by :func:`answer_key` of the query. Read when
    the pipeline is built, so workers receive the answers, not the path. A malformed file, entry or
    a query given twice with different answers fails before the run."""
    text = read_text(path, base_dir)
    try:
        stripped = text.lstrip()
        entries = (
            json.loads(text) if stripped.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except json.JSONDecodeError as exc:
        raise PhrasingError(f"{path}: not JSON Lines or a JSON list: {exc}") from None
    answers: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        query, answer = (entry.get("query"), entry.get("answer")) if isinstance(entry, dict) else (None, None)
        if not isinstance(query, str) or not isinstance(answer, str) or not query.strip() or not answer.strip():
            raise PhrasingError(f"{path}: entry {number} needs non-empty string 'query' and 'answer'")
        key = answer_key(query)
        if answers.get(key, answer.strip()) != answer.strip():
            raise PhrasingError(f"{path}: entry {number} answers query {query[:80]!r} a second time, differently")
        answers[key] = answer.strip()
    return answers


# --- pure helpers ---------------------------------------------------------------------------------


def _split_identifier(text: str) -> str:
    return re.sub(r"([a-z])([A-Z])", r"\1 \2", text).replace("_", " ").replace("-", " ")


@lru_cache(maxsize=65536)
def content_words(text: str) -> frozenset[str]:
    """Lower-cased words of 4+ letters, minus stop words, with a plural 's' removed."""
    words = re.findall(r"[a-z][a-z0-9]+", _split_identifier(text).lower())
    return frozenset(
        w[:-1] if w.endswith("s") and len(w) > 4 else w for w in words if len(w) >= 4 and w not in STOPWORDS
    )


def tool_words(tool: ToolSpec) -> frozenset[str]:
    return content_words(f"{tool.name} {tool.description}")


def pick_irrelevant_tools(
    query: str,
    source_tools: list[ToolSpec],
    pool: list[ToolSpec],
    k: int,
    seed: int,
    step_id: str,
    key: str,
    banned_names: Iterable[str] = (),
    banned_words: Iterable[str] = (),
    same_language: bool = True,
) -> list[ToolSpec]:
    """Up to ``k`` pool tools that do not fit ``query`` (see the module docstring for the rule):
    a tool qualifies only if its name is none of ``source_tools`` / ``banned_names`` and its
    content words meet none of the query's, the source tools' or ``banned_words``.

    With ``same_language``, qualifying tools described in the query's language come first (in
    keyed-hash order), then the others: a description in another language shares no word with
    the query by construction, so without this the check would favour foreign tools, and a
    prompt mixing languages is not one a user writes."""
    names = {t.name for t in source_tools} | set(banned_names)
    words = content_words(query).union(*(tool_words(t) for t in source_tools), banned_words)
    fitting = [t for t in pool if t.name not in names and not (tool_words(t) & words)]
    fitting.sort(key=lambda t: keyed_hash(seed, step_id, f"{key}:{t.name}"))
    if same_language:
        language = query_language(query)
        fitting.sort(key=lambda t: _description_language(t.description) not in (None, language))
    return fitting[:k]


@lru_cache(maxsize=65536)
def _description_language(description: str) -> str | None:
    return query_language(description) if description else None


def query_index(trajectory: Trajectory) -> int | None:
    """Index of the query: the user turn before the first supervised assistant turn."""
    for index, turn in enumerate(trajectory.turns):
        if turn.role is Role.ASSISTANT and turn.loss:
            for back in range(index - 1, -1, -1):
                if trajectory.turns[back].role is Role.USER:
                    return back
            return None
    return None


def _steps(turn: Any) -> list[Any] | None:
    try:
        return parse_turn(turn)
    except StepParseError:
        return None


def first_reply(trajectory: Trajectory, index: int) -> tuple[str | None, bool]:
    """(text of the first assistant reply after turn ``index``, whether it calls a tool)."""
    for turn in trajectory.turns[index + 1 :]:
        if turn.role is Role.ASSISTANT:
            steps = _steps(turn)
            return turn.text, steps is None or any(step.call is not None for step in steps)
    return None, False


def call_after_reply(trajectory: Trajectory, index: int) -> ToolCall | None:
    """The first call of the assistant turn right after the first reply to turn ``index`` and
    one user turn, when that reply made no call (``None`` otherwise): what the source did with
    the details the reply asked for."""
    replied = answered = False
    for turn in trajectory.turns[index + 1 :]:
        if turn.role is Role.ASSISTANT:
            call = next((step.call for step in _steps(turn) or [] if step.call is not None), None)
            if not replied:
                if call is not None:
                    return None
                replied = True
                continue
            return call if answered else None
        if turn.role is Role.USER and replied:
            if answered:
                return None
            answered = True
    return None


def needs_tool(trajectory: Trajectory) -> bool:
    """Whether the trajectory's own agent calls a tool (so its query needs one)."""
    for turn in trajectory.turns:
        if turn.role is Role.ASSISTANT and turn.loss:
            steps = _steps(turn)
            if steps and any(step.call is not None for step in steps):
                return True
    return False


@dataclasses.dataclass(frozen=True)
class SourceCall:
    """A call the source made after the query: ``seen``, what the environment had shown before
    it (the turns after the query that are not the assistant's, up to the call's), and
    ``reply``, its answer (those turns between the call's and the next supervised one)."""

    call: ToolCall
    seen: str
    reply: str


def source_call_trail(trajectory: Trajectory, index: int) -> list[SourceCall]:
    """Every call of the supervised assistant turns after turn ``index``, in order, with what
    the environment had shown before it and its reply (one pass, each turn parsed once)."""
    trail: list[SourceCall] = []
    seen: list[str] = []
    before = ""
    pending: list[ToolCall] = []  # calls of the last supervised turn, waiting for their reply
    reply: list[str] = []
    for turn in trajectory.turns[index + 1 :]:
        if turn.role is Role.ASSISTANT and turn.loss:
            trail += [SourceCall(call, before, "\n".join(reply)) for call in pending]
            before, reply = "\n".join(seen), []
            pending = [step.call for step in _steps(turn) or [] if step.call is not None]
        elif turn.role is not Role.ASSISTANT:
            seen.append(turn.text)
            reply.append(turn.text)
    return trail + [SourceCall(call, before, "\n".join(reply)) for call in pending]


def source_calls(trajectory: Trajectory, index: int) -> list[ToolCall]:
    """The tool calls of the supervised assistant turns after turn ``index``, in order."""
    return [made.call for made in source_call_trail(trajectory, index)]


def answer_after_call(trajectory: Trajectory, index: int) -> str | None:
    """The first plain assistant reply after the query's first call and its result, before the
    next user turn (the source's answer once its tool ran)."""
    called = False
    for turn in trajectory.turns[index + 1 :]:
        if turn.role is Role.USER:
            return None
        if turn.role is not Role.ASSISTANT:
            continue
        steps = _steps(turn)
        if steps is None:
            return None
        if any(step.call is not None for step in steps):
            called = True
        elif called and turn.text.strip() and not has_markers(turn.text):
            return turn.text.strip()
    return None


def query_language(text: str) -> str | None:
    """The language of a request: the offline language id, else by script (Han -> ``zh``,
    Latin letters -> ``en``) for texts too short to tell; ``None`` when neither applies."""
    language = detect_language(text)
    if language is not None:
        return language
    if _HAN.search(text):
        return "zh"
    return "en" if re.search(r"[A-Za-z]", text) else None


def description_in(language: str, description: str) -> str:
    """``description`` when it is written in ``language``, else ``""`` (so the phrase book falls
    back to its own words instead of mixing languages)."""
    if not description:
        return ""
    if language == "zh":
        return description if _HAN.search(description) else ""
    if _HAN.search(description):
        return ""
    detected = detect_language(description)
    return description if detected in (None, language) else ""


#: Where a tool description's prose ends and its parameter docs begin ("Args:", ":param x:").
_DOC_SECTIONS = re.compile(r"\s(?:Args|Arguments|Parameters|Params|Returns|Raises|Example|Examples)\s*:|\s:param\b")
#: Openings that name the tool instead of saying what it does ("This endpoint fetches ...").
_TOOL_OPENING = re.compile(
    r"^(?:this\s+)?(?:api|endpoint|tool|function|service|method|route)\s+(?:(?:will|can|is used to|to|that|which)\s+)?"
    r"|^(?:used|use this(?:\s+\w+)?|allows? (?:you|users?)) to\s+",
    re.IGNORECASE,
)
#: Verbs a tool description starts with, in their base form: the capability is a verb phrase
#: ("I can't <capability>"), so a description that starts otherwise gives none.
CAPABILITY_VERBS = frozenset(
    [
        "access",
        "add",
        "analyse",
        "analyze",
        "book",
        "calculate",
        "check",
        "compare",
        "compute",
        "convert",
        "count",
        "create",
        "decode",
        "delete",
        "detect",
        "determine",
        "download",
        "encode",
        "estimate",
        "evaluate",
        "extract",
        "fetch",
        "filter",
        "find",
        "generate",
        "geocode",
        "get",
        "give",
        "identify",
        "list",
        "locate",
        "look",
        "lookup",
        "obtain",
        "parse",
        "play",
        "post",
        "predict",
        "provide",
        "query",
        "rank",
        "read",
        "recommend",
        "remove",
        "render",
        "request",
        "resolve",
        "retrieve",
        "return",
        "scan",
        "schedule",
        "scrape",
        "search",
        "send",
        "shorten",
        "show",
        "solve",
        "summarize",
        "summarise",
        "track",
        "translate",
        "update",
        "upload",
        "validate",
        "verify",
    ]
)


def _base_verb(word: str) -> str:
    """The base form of a third-person verb (``fetches`` -> ``fetch``, ``retrieves`` ->
    ``retrieve``, ``queries`` -> ``query``); other words unchanged."""
    lower = word.lower()
    for candidate in (
        lower[:-3] + "y" if lower.endswith("ies") else None,
        lower[:-2] if lower.endswith(("ches", "shes", "sses", "xes", "zes")) else None,
        lower[:-1] if lower.endswith("s") and not lower.endswith("ss") else None,
    ):
        if candidate and candidate in CAPABILITY_VERBS:
            return candidate
    return lower


def capability_text(description: str) -> str:
    """An English tool description as a verb phrase for the phrase book's ``capability`` (its
    first sentence, parameter docs cut, "This endpoint fetches" -> "fetch", a third-person verb
    in its base form), or ``""`` when it does not start with a known verb (the phrase book then
    uses its own words). Non-English descriptions are returned as they are."""
    if not description or _HAN.search(description):
        return description
    text = " ".join(description.split())
    cut = _DOC_SECTIONS.search(f" {text}")
    text = text[: max(0, cut.start() - 1)] if cut else text
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].strip().rstrip(".")
    text = _TOOL_OPENING.sub("", text, count=1).strip()
    first, _, rest = text.partition(" ")
    verb = _base_verb(first.strip(",:;"))
    if verb not in CAPABILITY_VERBS:
        return ""
    return f"{verb} {rest}".strip()


_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def spoken_name(name: str) -> str:
    """An argument's name as the words an answer says: ``release_year`` and ``releaseYear``
    become ``release year`` (a reply to a user does not quote an API's identifiers)."""
    return " ".join(_CAMEL_HUMP.sub(" ", name).replace("_", " ").replace("-", " ").split()).lower()


def call_details(call: ToolCall, limit: int = 4) -> list[dict[str, str]]:
    """Up to ``limit`` named scalar arguments of ``call`` as ``{name, value}``, the name in words
    (:func:`spoken_name`). The parser's bare ``input`` / ``target`` values are left out: in
    text-command dialects (KG, WebShop) the agent chose them, the user did not say them."""
    if not isinstance(call.arguments, dict):
        return []
    details = []
    for name, value in call.arguments.items():
        if name in BARE_KEYS or isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        if str(value).strip() == "":
            continue
        text = str(value).strip().replace("\n", " ")
        details.append({"name": spoken_name(str(name)), "value": text[:120]})
        if len(details) == limit:
            break
    return details


#: Literals a command can only know from what it was shown: numbers of 2+ digits, and names
#: with a dot or a slash (files, paths) of 2+ letters or digits (not ``..``).
_LITERAL = re.compile(r"\d{2,}|[\w~-]*[./][\w./~-]+")
_ALNUM = re.compile(r"[^\W_]")


def learned_literal(code: str, observed: str, known: str) -> str | None:
    """A literal of ``code`` that ``observed`` (what the environment showed) has and ``known``
    (the user's request, the code before) does not, or ``None``."""
    for literal in _LITERAL.findall(code):
        if len(_ALNUM.findall(literal)) >= 2 and literal in observed and literal not in known:
            return literal
    return None


def call_code(
    calls: list[ToolCall],
    limit: int = 3,
    asked: str = "",
    observed: tuple[str, ...] = (),
    failed: tuple[bool, ...] = (),
) -> tuple[str, str] | None:
    """(code, language) of the source's code calls (SQL queries, shell scripts), at most
    ``limit`` distinct ones in order, or ``None`` when it ran none.

    With ``observed`` (per call, what the environment had shown before it; see
    :class:`SourceCall`), the code stops before the first call that uses a literal
    (a number, a file name) it could only have learned from an output the user never saw
    (``echo 10742594 | numfmt``, ``cat ./init_text2.txt`` after a ``find``): the user is told
    to run it themselves, without those outputs. A call marked in ``failed`` (the environment
    answered with an error) is left out: the corrected one that follows is what to run. A call
    that a later one extends (``ls -lh ~`` before ``ls -lh ~ | sort -rh -k5 | head -5``) was a
    step of building that one and is left out too: the user needs the command, not the agent's
    way to it."""
    blocks: list[str] = []
    language = None
    for position, call in enumerate(calls):
        if not isinstance(call.arguments, dict) or len(call.arguments) != 1:
            continue
        ((key, value),) = call.arguments.items()
        lang = CODE_KEYS.get(key)
        if lang is None or not isinstance(value, str) or call.name not in (lang, "bash", "sql"):
            continue
        if language not in (None, lang):
            continue
        if position < len(failed) and failed[position]:
            continue
        seen = observed[position] if position < len(observed) else ""
        if seen and learned_literal(value, seen, asked + "\n" + "\n".join(blocks)):
            break
        language = lang
        code = value.strip()
        if code and code not in blocks:
            blocks = [block for block in blocks if not extends(code, block)]
            blocks.append(code)
        if len(blocks) == limit:
            break
    return ("\n\n".join(blocks), language) if blocks and language else None


def extends(code: str, earlier: str) -> bool:
    """Whether ``code`` is ``earlier`` with more after it (a pipe, a clause, more commands), not
    merely a longer word: ``ls -lh ~ | head`` extends ``ls -lh ~``; ``ls -la`` does not extend
    ``ls -l``. Runs of white space count as one space."""
    code, earlier = " ".join(code.split()), " ".join(earlier.split())
    if len(code) <= len(earlier) or not code.startswith(earlier):
        return False
    follows = code[len(earlier)]
    return not (follows.isalnum() or follows == "_") or not (earlier[-1].isalnum() or earlier[-1] == "_")


@dataclasses.dataclass(frozen=True)
class Query:
    """A query read from a trajectory: its kind, the request as the user asks it, its language,
    the source's plain answer (``normal``; the source's decline for the ``dataset`` responder),
    and the source's first call (``needs_tool``)."""

    kind: QueryKind
    text: str
    language: str | None
    answer: str | None = None
    calls: tuple[ToolCall, ...] = ()
    #: Per call, what the environment had shown before it (:attr:`SourceCall.seen`).
    observed: tuple[str, ...] = ()
    #: Per call, whether the environment answered it with an error (:attr:`SourceCall.reply`).
    failed: tuple[bool, ...] = ()


class QueryReader:
    """Reads the query of a trajectory (:meth:`examine`), with the step's rules and languages."""

    def __init__(
        self, config: NegativesConfig, rules: QueryRules, languages: set[str], supplied: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.rules = rules
        self.languages = languages
        self.supplied = supplied

    def examine(self, group: str, trajectory: Trajectory) -> Query | str:
        """The trajectory's :class:`Query`, or the reason it gives none (a filter reason)."""
        if trajectory.task in self.config.exclude_tasks:
            return "excluded_task"
        index = query_index(trajectory)
        if index is None or not trajectory.turns[index].text.strip():
            return "no_query"
        raw = trajectory.turns[index].text
        if self.rules.is_observation(raw):
            return "environment_observation"
        text = self.rules.request(raw)
        reply, calls = first_reply(trajectory, index)
        if reply is None:
            return "no_reply"
        if calls or self._gathers_details(trajectory, index, reply):
            return self._tool_query(group, trajectory, index, text)
        return self._plain_query(group, text, reply)

    def _gathers_details(self, trajectory: Trajectory, index: int, reply: str) -> bool:
        """Whether the first reply only asks for the details of a call the source then makes
        ("Sure, give me the recipient's address" before ``send_email``): the query needs that
        tool, and the reply, kept as a plain answer, would promise what no tool can do. A
        call the assistant can work out itself (``answerable_tools``) keeps the reply."""
        if not self.rules.asks_details(reply):
            return False
        call = call_after_reply(trajectory, index)
        return call is not None and not self.rules.answerable(call.name)

    def _tool_query(self, group: str, trajectory: Trajectory, index: int, text: str) -> Query | str:
        trail = source_call_trail(trajectory, index)
        made = [step.call for step in trail]
        if not made:
            return "no_tool_call"
        if self.rules.answerable(made[0].name) or (trajectory.task or "") in self.rules.answerable_tasks:
            answer = answer_after_call(trajectory, index)
            if answer is not None:
                return self._plain_query(group, text, answer)
            if self.config.responder == "model":  # the model answers it as it would
                return Query("normal", text, query_language(text))
            return "answerable_without_answer"  # never refused: without a real answer, not used
        if self.rules.lookup(made[0].name):
            if self.config.responder == "model":  # the model answers from what it knows
                return Query("normal", text, query_language(text))
            return "knowledge_lookup"
        if self.config.responder == "template" and any(self.rules.broken_code(call) for call in made):
            return "broken_code_in_help"
        if group != "agent":
            return "no_plain_answer"
        if self.config.responder == "dataset":
            return self._supplied_query(text, made) if self.supplied is not None else "no_plain_answer"
        language = query_language(text)
        if self.config.responder == "template" and language not in self.languages:
            return "no_phrase_book_language"
        observed = tuple(step.seen for step in trail)
        failed = tuple(self.rules.is_error(step.reply) for step in trail)
        return Query("needs_tool", text, language, calls=tuple(made), observed=observed, failed=failed)

    def _supplied_query(self, text: str, made: list[ToolCall]) -> Query | str:
        """A needs-tool query answered from the user's ``answers`` file."""
        assert self.supplied is not None
        answer = self.supplied.get(answer_key(text))
        if answer is None:
            return "no_supplied_answer"
        language, answer_language = query_language(text), query_language(answer)  # script decides short texts
        if language is not None and answer_language is not None and language != answer_language:
            return "answer_language_mismatch"
        if has_markers(answer):
            return "react_markers_in_answer"
        return Query("needs_tool", text, language, answer=answer, calls=tuple(made))

    def _plain_query(self, group: str, text: str, reply: str) -> Query | str:
        language = detect_language(text)
        if self.rules.declines(reply):
            if self.config.responder == "dataset" and group == "agent" and self.supplied is None:
                return Query("needs_tool", text, language, answer=reply.strip())
            return "declines_request"
        if has_markers(reply):
            return "react_markers_in_answer"
        if has_collapsed_python(reply):
            return "collapsed_code_in_answer"
        if reply.rstrip().endswith(("?", "？")):
            return "asks_back"
        answer_language = detect_language(reply)
        if language is not None and answer_language is not None and language != answer_language:
            return "answer_language_mismatch"
        return Query("normal", text, language, answer=reply.strip())


def eligibility(group: str, trajectory: Trajectory, reader: QueryReader) -> str | None:
    """``None`` when the trajectory gives a query, else the filter reason."""
    found = reader.examine(group, trajectory)
    return found if isinstance(found, str) else None


def draw_label(group: str, query: Query) -> str:
    """The ranking a query enters: ``needs_tool``, ``normal:general`` or ``normal:agent``."""
    return "needs_tool" if query.kind == "needs_tool" else f"normal:{group}"


def draw_limits(cells: dict[tuple[str, str], int]) -> dict[str, int]:
    """How many of each ranking's smallest keys the assignment can use."""
    normal = sum(n for (case, kind), n in cells.items() if kind == "normal" and case != "general_with_tools")
    general = cells.get(("general_with_tools", "normal"), 0)
    needs = sum(n for (_, kind), n in cells.items() if kind == "needs_tool")
    return {"needs_tool": needs, "normal:general": general + normal, "normal:agent": normal}


def assign(draws: dict[str, list[tuple[tuple[int, str], str]]], cells: dict[tuple[str, str], int]) -> dict[str, str]:
    """Selection ``key -> "<case>:<query kind>"`` from the rankings (count, then select):

    needs-tool keys in rank order go to ``no_tools`` then ``irrelevant_tools``; the general
    inputs' normal keys first fill ``general_with_tools`` (whole conversations come only from
    general inputs), then all remaining normal keys in rank order fill ``no_tools`` then
    ``irrelevant_tools``. Each key is assigned at most once."""
    selection: dict[str, str] = {}

    def fill(keys: list[str], cases: list[str], kind: str) -> list[str]:
        start = 0
        for case in cases:
            quota = cells.get((case, kind), 0)
            for key in keys[start : start + quota]:
                selection[key] = f"{case}:{kind}"
            start += quota
        return keys[start:]

    fill([k for _, k in sorted(draws.get("needs_tool", []))], list(AGENT_CASES), "needs_tool")
    general = sorted(draws.get("normal:general", []))
    taken = cells.get(("general_with_tools", "normal"), 0)
    fill([k for _, k in general[:taken]], ["general_with_tools"], "normal")
    rest = sorted(general[taken:] + list(draws.get("normal:agent", [])))
    fill([k for _, k in rest], list(AGENT_CASES), "normal")
    return selection


def select(records: Iterable[tuple[str, Trajectory]], reader: QueryReader, seed: int, step_id: str) -> dict[str, str]:
    """:func:`assign` over in-memory records (what the Beam step computes; used by tests and
    the benchmark's plain loop)."""
    cells = reader.config.cell_quotas()
    limits = draw_limits(cells)
    ranked: dict[str, list[tuple[tuple[int, str], str]]] = {label: [] for label in limits}
    for group, trajectory in records:
        found = reader.examine(group, trajectory)
        if not isinstance(found, str):
            key = f"{group}:{trajectory.id}"
            ranked[draw_label(group, found)].append((rank_key(seed, step_id, key), key))
    return assign({label: heapq.nsmallest(limits[label], keys) for label, keys in ranked.items()}, cells)


# --- the processor ------------------------------------------------------------------------------


class NegativeMaker:
    """Picklable processor: one negative for each selected ``(group, trajectory)``."""

    def __init__(
        self,
        config: NegativesConfig,
        context: StepContext,
        answers: dict[str, list[str]],
        system: dict[str, list[str]],
        rules: QueryRules,
        supplied: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.context = context
        self.answers = PhraseBook(answers, context.seed, context.step_id)
        self.system = PhraseBook(system, context.seed, context.step_id)
        self.reader = QueryReader(config, rules, book_languages(answers), supplied)
        self._pool_source: list[dict[str, Any]] | None = None
        self._pool: list[ToolSpec] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool_source": None, "_pool": []}

    def _tools(self, pool: list[dict[str, Any]]) -> list[ToolSpec]:
        if pool is not self._pool_source:
            self._pool_source, self._pool = pool, [ToolSpec.model_validate(t) for t in pool]
        return self._pool

    def _system(self, tools: list[ToolSpec], key: str) -> Message:
        text = self.system.render("system_tools", f"{key}:system", tools=[_tool_view(t) for t in tools])
        return Message(role=Role.SYSTEM, content=text, loss=False)

    def compose(self, case: str, trajectory: Trajectory, query: Query, tools: list[ToolSpec], key: str) -> str:
        """The phrase-book answer to a needs-tool ``query``, in its language: what is missing
        (the capability of the tool the source called) and help (the code the source ran, the
        request's details that the user actually wrote, or a general offer)."""
        language = query.language or "en"
        call = query.calls[0]
        declared = {t.name: t for t in trajectory.tools}.get(call.name)
        description = self.reader.rules.description(declared.description) if declared else ""
        capability = self.answers.render(
            f"{language}.capability",
            key,
            tool=call.name,
            description=capability_text(description_in(language, description)),
            task=trajectory.task or "",
        )
        code = call_code(list(query.calls), asked=query.text, observed=query.observed, failed=query.failed)
        asked = query.text.casefold()
        details = [d for d in call_details(call) if d["value"].casefold() in asked]  # only what the user said
        if code is not None:
            help_text = self.answers.render(
                f"{language}.help_code", key, capability=capability, code=code[0], code_language=code[1]
            )
        elif details:
            help_text = self.answers.render(f"{language}.help_details", key, capability=capability, details=details)
        else:
            help_text = self.answers.render(f"{language}.help_general", key, capability=capability)
        separator = "、" if language == "zh" else ", "
        return self.answers.render(
            f"{language}.{case}",
            key,
            capability=capability,
            help=help_text,
            query=query.text,
            tool_names=separator.join(t.name for t in tools),
        )

    def _answer(self, case: str, trajectory: Trajectory, query: Query, tools: list[ToolSpec], key: str) -> str:
        if query.answer is not None:
            return query.answer
        if self.config.responder == "model":
            return ""  # filled in by RunInference after this step's ParDo
        return self.compose(case, trajectory, query, tools, key)

    def _banned(self, query: Query) -> tuple[set[str], set[str]]:
        names = {call.name for call in query.calls}
        words: set[str] = set()
        for name in names:
            words |= content_words(name) | self.reader.rules.words_of(name)
        return names, words

    def build(self, case: str, trajectory: Trajectory, pool: list[ToolSpec], query: Query | None = None) -> Sample:
        """The negative of ``case`` for ``trajectory`` (its query read again when not given)."""
        if query is None:
            found = self.reader.examine("general" if case == "general_with_tools" else "agent", trajectory)
            if isinstance(found, str):
                raise RecordError("no_query", found)
            query = found
        key = f"{case}:{trajectory.id}"
        tools: list[ToolSpec] = []
        if case in ("irrelevant_tools", "general_with_tools"):
            names, words = self._banned(query)
            tools = pick_irrelevant_tools(
                query.text,
                trajectory.tools,
                [t for t in pool if not self.reader.rules.protocol(t.name)],
                self.config.tools_per_sample,
                self.context.seed,
                self.context.step_id,
                key,
                banned_names=names,
                banned_words=words,
                same_language=self.config.same_language_tools,
            )
            if not tools:
                raise RecordError("no_irrelevant_tools", "no pool tool passes the irrelevance check for this query")
        messages = [self._system(tools, key)] if tools and self.config.style == "agent_flan" else []
        if case == "general_with_tools":
            messages += [
                Message(role=t.role, content=t.text, loss=t.loss, part="prose" if t.role is Role.ASSISTANT else None)
                for t in trajectory.turns
                if t.role is not Role.SYSTEM
            ]
            responder = "source"
        else:
            answer = self._answer(case, trajectory, query, tools, key)
            if has_markers(answer):
                raise RecordError("react_markers_in_answer", answer[:300])
            messages += [
                Message(role=Role.USER, content=query.text, loss=False),
                Message(role=Role.ASSISTANT, content=answer, loss=True, part="prose"),
            ]
            real = query.kind == "normal" and query.answer is not None
            responder = "source" if real else self.config.responder
        return sample_of(
            trajectory,
            messages,
            kind="negative",
            derivation=f"negative:{case}",
            context=self.context,
            tools=tools,
            metadata={
                "case": case,
                "query": query.kind,
                "language": query.language,
                "responder": responder,
                "source_tools": [t.name for t in trajectory.tools],
            },
        )

    def __call__(
        self, element: tuple[str, Trajectory], selection: dict[str, str], pool: list[dict[str, Any]]
    ) -> Iterator[Any]:
        group, trajectory = element
        found = self.reader.examine(group, trajectory)
        if isinstance(found, str):
            yield Filtered(found, f"{group} trajectory gives no query for a negative")
            return
        cell = selection.get(f"{group}:{trajectory.id}")
        if cell is None:
            yield Filtered("not_selected", f"eligible {group} query ({found.kind}), not drawn", keep_payload=False)
            return
        case = cell.split(":", 1)[0]
        try:
            sample = self.build(case, trajectory, self._tools(pool), found)
        except PhrasingError as exc:
            raise RecordError("template_error", str(exc)) from None
        yield Stat(f"case:{case}", 1)
        yield Stat(f"query:{found.kind}", 1)
        yield sample


# --- the step -----------------------------------------------------------------------------------


def _pool_entries(element: tuple[str, Trajectory]) -> Iterator[tuple[str, str]]:
    group, trajectory = element
    if group == "agent":
        for tool in trajectory.tools:
            yield tool.name, tool.model_dump_json()


def _fill_answer(keyed: tuple[Sample, Any]) -> Sample:
    sample, result = keyed
    messages = list(sample.messages)
    messages[-1] = messages[-1].model_copy(update={"content": result.inference})
    return sample.model_copy(update={"messages": messages, "counts": count_tokens(messages)})


def _needs_model(sample: Sample) -> bool:
    return sample.metadata.get("responder") == "model"


class Negatives(Step):
    """Negative samples against tool hallucination (see the module docstring)."""

    type_name = "negatives"
    config_model = NegativesConfig
    input_type = Trajectory
    output_type = Sample
    fan_in = "named"

    @classmethod
    def check_inputs(cls, config: StepConfig, input_names: list[str]) -> None:
        assert isinstance(config, NegativesConfig)
        declared = [*config.agent_inputs, *config.general_inputs]
        unknown = sorted(set(declared) - set(input_names))
        unassigned = sorted(set(input_names) - set(declared))
        if unknown:
            raise ValueError(f"agent_inputs/general_inputs name {unknown}, which are not inputs of this step")
        if unassigned:
            raise ValueError(f"inputs {unassigned} are in neither agent_inputs nor general_inputs")

    def books(self) -> tuple[dict[str, list[str]], dict[str, list[str]], QueryRules]:
        """(answer phrase book, align phrase book for the system prompt, query rules), checked."""
        answers = load_answer_book(self.config.templates, self.context.base_dir)
        system = load_book("align/default.yaml", None, self.context.base_dir, SLOT_VARIABLES)
        rules = load_rules(self.config.query_rules, self.context.base_dir)
        return answers, system, rules

    def supplied(self) -> dict[str, str] | None:
        """The user's answers for the ``dataset`` responder (``answers:``), or ``None``."""
        return load_answers(self.config.answers, self.context.base_dir) if self.config.answers else None

    def maker(self) -> NegativeMaker:
        return NegativeMaker(self.config, self.context, *self.books(), self.supplied())

    @classmethod
    def prefetch(cls, config: StepConfig) -> None:
        language.prefetch()  # the language of every query and answer is told

    def check(self) -> None:
        self.books()
        self.supplied()
        if self.config.responder == "model":
            import os

            path = self.config.model or ""
            full = path if os.path.isabs(path) else os.path.join(self.context.base_dir, path)
            if not os.path.isdir(full):
                raise ValueError(f"model directory {full!r} does not exist")

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, Any]:
        import apache_beam as beam

        from transforms.beam.negatives import SmallestPerLabel
        from transforms.beam.records import RecordDoFn
        from transforms.beam.singletons import combined_singleton
        from transforms.spill import Merge

        config, ctx = self.config, self.context
        maker = self.maker()
        reader = maker.reader
        groups = [("agent", name) for name in config.agent_inputs] + [
            ("general", name) for name in config.general_inputs
        ]
        tagged = [
            inputs[name]
            | f"Tag {name}"
            >> beam.Map(lambda t, g=group: (g, t)).with_output_types(beam.typehints.Tuple[str, Trajectory])
            for group, name in groups
        ]
        # Counting runs on each input where it is read; the records wait for the draw on disk.
        records = tuple(tagged) | "Merge" >> Merge(ctx.spill_dir("records"), beam.typehints.Tuple[str, Trajectory])

        cells = config.cell_quotas()
        limits = draw_limits(cells)

        def ranks(element: tuple[str, Trajectory]) -> Iterator[tuple[str, tuple[tuple[int, str], str]]]:
            group, trajectory = element
            found = reader.examine(group, trajectory)
            if not isinstance(found, str):
                label = draw_label(group, found)
                if limits.get(label):
                    key = f"{group}:{trajectory.id}"
                    yield label, (rank_key(ctx.seed, ctx.step_id, key), key)

        ranked = [
            pcoll | f"Rank {name}" >> beam.FlatMap(ranks) for (_, name), pcoll in zip(groups, tagged, strict=True)
        ]
        selection = combined_singleton(
            tuple(ranked) | "Ranked" >> beam.Flatten(),
            SmallestPerLabel(limits),
            "Draw",
            then=functools.partial(assign, cells=cells),
            then_label="Assign",
        )
        tools = [
            pcoll | f"Tools {name}" >> beam.FlatMap(_pool_entries)
            for (g, name), pcoll in zip(groups, tagged, strict=True)
            if g == "agent"
        ] or [tagged[0].pipeline | "NoTools" >> beam.Create([]).with_output_types(beam.typehints.KV[str, str])]
        pool = combined_singleton(
            tuple(tools) | "AllTools" >> beam.Flatten() | "OnePerName" >> beam.CombinePerKey(min),
            beam.combiners.ToListCombineFn(),
            "Pool",
            then=lambda entries: [ToolSpec.model_validate_json(j).model_dump() for _, j in sorted(entries)],
            then_label="Sorted",
        )
        outputs = records | "Build" >> beam.ParDo(
            RecordDoFn(maker, ctx.step_id), selection=selection, pool=pool
        ).with_outputs(REJECTED, LEDGER, main=MAIN)
        result = self._typed(outputs)
        if config.responder == "model":
            import os

            from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

            from transforms.responders import CausalLMHandler

            path = config.model if os.path.isabs(config.model or "") else os.path.join(ctx.base_dir, config.model or "")
            handler = KeyedModelHandler(CausalLMHandler(path, config.max_new_tokens))
            answered = (
                result[MAIN]
                | "Prompts" >> beam.Map(lambda s: (s, s.messages[:-1]) if _needs_model(s) else (s, None))
                | "Split" >> beam.Partition(lambda kv, n: 0 if kv[1] is None else 1, 2)
            )
            generated = answered[1] | "Generate" >> RunInference(handler) | "Answer" >> beam.Map(_fill_answer)
            kept = answered[0] | "Keep" >> beam.Map(lambda kv: kv[0])
            result[MAIN] = (kept, generated) | "Answered" >> beam.Flatten()
            result[MAIN].element_type = Sample
        return result

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any] | None:
        assert isinstance(config, NegativesConfig)
        achieved = {k.split(":", 1)[1]: v for k, v in ledger.stats.items() if k.startswith("case:")}
        queries = {k.split(":", 1)[1]: v for k, v in ledger.stats.items() if k.startswith("query:")}
        return {
            "responder": config.responder,
            "target": config.quotas(),
            "achieved": achieved,
            "needs_tool_share": config.needs_tool_share,
            "by_query": queries,
        }
