"""Step ``negatives``: samples that teach a model not to call tools when it should not.

Agent-FLAN's four cases are {tools given, no tools} x {query needs a tool, normal query}; only
"tools given + needs a tool" should produce a call (that positive case is the aligned agent
data). This step builds the others, each with a plain-text target:

- ``no_tools``: an agent query that needs a tool, with its tools removed;
- ``irrelevant_tools``: an agent query with its tools replaced by tools that do not fit it;
- ``general_with_tools``: a general conversation (its real answers kept) with tools from the
  pool in the system prompt ("tools given + normal query").

Irrelevant tools are chosen by a documented check, not luck (:func:`pick_irrelevant_tools`): a
pool tool qualifies only if its name is not a tool of the query's source and its name and
description share no content word with the query or with the source's tools. Among those, the
first ``tools_per_sample`` by keyed hash are used.

Answers come from a responder (see :mod:`transforms.responders`): ``dataset``, ``template`` or
``model``. Exact counts per case: ``count`` split by ``shares`` (largest remainder), drawn by a
keyed-hash ranking of the eligible inputs (count, then select). Every input trajectory ends
emitted (one negative) or filtered with a reason; each negative carries its case in
``lineage.derivation`` (``negative:<case>``) and ``metadata["case"]``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any, Literal

import apache_beam as beam
from pydantic import Field, model_validator

from schemas import Message, Role, Sample, ToolSpec, Trajectory, count_tokens
from transforms.align import SLOT_VARIABLES, _tool_view
from transforms.base import (
    LEDGER,
    MAIN,
    REJECTED,
    Filtered,
    RecordDoFn,
    RecordError,
    Stat,
    Step,
    StepConfig,
    StepContext,
)
from transforms.phrasing import PhraseBook, PhrasingError, load_book
from transforms.react import StepParseError, parse_turn
from transforms.samples import sample_of
from transforms.sampling import keyed_hash, rank_key
from transforms.spill import Merge

Case = Literal["no_tools", "irrelevant_tools", "general_with_tools"]
AGENT_CASES: tuple[Case, ...] = ("no_tools", "irrelevant_tools")
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


class NegativesConfig(StepConfig):
    agent_inputs: list[str] = Field(min_length=1)
    general_inputs: list[str] = Field(default_factory=list)
    count: int = Field(761, ge=0)
    shares: dict[Case, float] = Field(default_factory=lambda: {"no_tools": 0.5, "irrelevant_tools": 0.5})
    responder: Literal["dataset", "template", "model"] = "template"
    templates: str | None = None
    model: str | None = None
    max_new_tokens: int = Field(128, ge=1)
    tools_per_sample: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> NegativesConfig:
        if any(v < 0 for v in self.shares.values()) or not math.isclose(sum(self.shares.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must be non-negative and sum to 1, got {self.shares}")
        if self.shares.get("general_with_tools", 0) > 0 and not self.general_inputs:
            raise ValueError("case 'general_with_tools' needs 'general_inputs'")
        if self.responder == "model" and not self.model:
            raise ValueError("responder 'model' needs 'model': a local model directory")
        return self

    def quotas(self) -> dict[str, int]:
        """``count`` split by ``shares`` with the largest-remainder method (sums to ``count``)."""
        raw = {case: self.count * share for case, share in sorted(self.shares.items())}
        quotas = {case: math.floor(v) for case, v in raw.items()}
        left = self.count - sum(quotas.values())
        for case in sorted(raw, key=lambda c: (-(raw[c] - quotas[c]), c))[:left]:
            quotas[case] += 1
        return quotas


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
    query: str, source_tools: list[ToolSpec], pool: list[ToolSpec], k: int, seed: int, step_id: str, key: str
) -> list[ToolSpec]:
    """Up to ``k`` pool tools that do not fit ``query`` (see the module docstring for the rule)."""
    banned_names = {t.name for t in source_tools}
    banned_words = content_words(query).union(*(tool_words(t) for t in source_tools))
    fitting = [t for t in pool if t.name not in banned_names and not (tool_words(t) & banned_words)]
    fitting.sort(key=lambda t: keyed_hash(seed, step_id, f"{key}:{t.name}"))
    return fitting[:k]


def query_index(trajectory: Trajectory) -> int | None:
    """Index of the query: the user turn before the first supervised assistant turn."""
    for index, turn in enumerate(trajectory.turns):
        if turn.role is Role.ASSISTANT and turn.loss:
            for back in range(index - 1, -1, -1):
                if trajectory.turns[back].role is Role.USER:
                    return back
            return None
    return None


def first_reply(trajectory: Trajectory, index: int) -> tuple[str | None, bool]:
    """(text of the first assistant reply after turn ``index``, whether it calls a tool)."""
    for turn in trajectory.turns[index + 1 :]:
        if turn.role is Role.ASSISTANT:
            try:
                calls = any(step.call is not None for step in parse_turn(turn))
            except StepParseError:
                calls = True
            return turn.text, calls
    return None, False


def needs_tool(trajectory: Trajectory) -> bool:
    """Whether the trajectory's own agent calls a tool (so its query needs one)."""
    for turn in trajectory.turns:
        if turn.role is Role.ASSISTANT and turn.loss:
            try:
                if any(step.call is not None for step in parse_turn(turn)):
                    return True
            except StepParseError:
                continue
    return False


def eligibility(group: str, trajectory: Trajectory, responder: str) -> str | None:
    """``None`` when the trajectory can give a negative of its group, else the filter reason."""
    index = query_index(trajectory)
    if index is None or not trajectory.turns[index].text.strip():
        return "no_query"
    if group == "general":
        reply, calls = first_reply(trajectory, index)
        return None if reply and not calls else "no_plain_answer"
    if responder == "dataset":
        reply, calls = first_reply(trajectory, index)
        return None if reply and not calls else "no_plain_answer"
    return None if needs_tool(trajectory) else "no_tool_call"


# --- the processor ------------------------------------------------------------------------------


class NegativeMaker:
    """Picklable processor: one negative for each selected ``(group, trajectory)``."""

    def __init__(
        self, config: NegativesConfig, context: StepContext, answers: dict[str, list[str]], system: dict[str, list[str]]
    ) -> None:
        self.config = config
        self.context = context
        self.answers = PhraseBook(answers, context.seed, context.step_id)
        self.system = PhraseBook(system, context.seed, context.step_id)
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

    def _answer(self, case: str, trajectory: Trajectory, index: int, tools: list[ToolSpec]) -> str:
        if self.config.responder == "dataset":
            reply, _ = first_reply(trajectory, index)
            return reply or ""
        if self.config.responder == "model":
            return ""  # filled in by RunInference after this step's ParDo
        names = ", ".join(t.name for t in tools)
        return self.answers.render(case, trajectory.id, tool_names=names, query=trajectory.turns[index].text)

    def build(self, case: str, trajectory: Trajectory, pool: list[ToolSpec]) -> Sample:
        index = query_index(trajectory)
        assert index is not None
        key = f"{case}:{trajectory.id}"
        query = trajectory.turns[index].text
        tools: list[ToolSpec] = []
        if case in ("irrelevant_tools", "general_with_tools"):
            source_tools = trajectory.tools
            tools = pick_irrelevant_tools(
                query, source_tools, pool, self.config.tools_per_sample, self.context.seed, self.context.step_id, key
            )
            if not tools:
                raise RecordError("no_irrelevant_tools", "no pool tool passes the irrelevance check for this query")
        messages = [self._system(tools, key)] if tools else []
        if case == "general_with_tools":
            messages += [
                Message(role=t.role, content=t.text, loss=t.loss, part="prose" if t.role is Role.ASSISTANT else None)
                for t in trajectory.turns
                if t.role is not Role.SYSTEM
            ]
        else:
            answer = self._answer(case, trajectory, index, tools)
            messages += [
                Message(role=Role.USER, content=query, loss=False),
                Message(role=Role.ASSISTANT, content=answer, loss=True, part="prose"),
            ]
        return sample_of(
            trajectory,
            messages,
            kind="negative",
            derivation=f"negative:{case}",
            context=self.context,
            tools=tools,
            metadata={
                "case": case,
                "responder": "dataset" if case == "general_with_tools" else self.config.responder,
                "source_tools": [t.name for t in trajectory.tools],
            },
        )

    def __call__(
        self, element: tuple[str, Trajectory], selection: dict[str, str], pool: list[dict[str, Any]]
    ) -> Iterator[Any]:
        group, trajectory = element
        reason = eligibility(group, trajectory, self.config.responder)
        if reason is not None:
            yield Filtered(reason, f"{group} trajectory cannot give a negative")
            return
        case = selection.get(f"{group}:{trajectory.id}")
        if case is None:
            yield Filtered("not_selected", f"eligible {group} trajectory, not drawn", keep_payload=False)
            return
        try:
            sample = self.build(case, trajectory, self._tools(pool))
        except PhrasingError as exc:
            raise RecordError("template_error", str(exc)) from None
        yield Stat(f"case:{case}", 1)
        yield sample


# --- the step -----------------------------------------------------------------------------------


def _assign(ranked: list[tuple[tuple[int, str], str]], cases: list[tuple[str, int]]) -> dict[str, str]:
    """First quota of the ranking to the first case, the next to the second, ..."""
    keys = [key for _, key in sorted(ranked)]
    selection, start = {}, 0
    for case, quota in cases:
        for key in keys[start : start + quota]:
            selection[key] = case
        start += quota
    return selection


class _Smallest:
    """Combines lists of ranked keys into the ``n`` smallest (associative, so Beam may combine
    partial results in any order)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, lists: Iterable[list[Any]]) -> list[Any]:
        return heapq.nsmallest(self.n, itertools.chain.from_iterable(lists))


def _merge(dicts: list[dict[str, str]]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for d in dicts:
        merged.update(d)
    return merged


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

    def books(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        answers = load_book(
            "negatives/default.yaml",
            self.config.templates,
            self.context.base_dir,
            {c: {"tool_names": "a, b", "query": "q"} for c in AGENT_CASES},
        )
        system = load_book("align/default.yaml", None, self.context.base_dir, SLOT_VARIABLES)
        return answers, system

    def check(self) -> None:
        self.books()
        if self.config.responder == "model":
            import os

            path = self.config.model or ""
            full = path if os.path.isabs(path) else os.path.join(self.context.base_dir, path)
            if not os.path.isdir(full):
                raise ValueError(f"model directory {full!r} does not exist")

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, Any]:
        config, ctx = self.config, self.context
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

        quotas = config.quotas()
        agent_cases = [(c, quotas.get(c, 0)) for c in AGENT_CASES]
        general_cases = [("general_with_tools", quotas.get("general_with_tools", 0))]

        def ranks(element: tuple[str, Trajectory], group: str) -> Iterator[tuple[tuple[int, str], str]]:
            g, trajectory = element
            if g == group and eligibility(g, trajectory, config.responder) is None:
                key = f"{g}:{trajectory.id}"
                yield rank_key(ctx.seed, ctx.step_id, key), key

        selections = []
        for group, cases in (("agent", agent_cases), ("general", general_cases)):
            total = sum(q for _, q in cases)
            members = [(name, pcoll) for (g, name), pcoll in zip(groups, tagged, strict=True) if g == group]
            if total == 0 or not members:
                continue
            drawn = [
                pcoll
                | f"Rank {group} {name}" >> beam.FlatMap(ranks, group)
                | f"Draw {group} {name}" >> beam.combiners.Top.Smallest(total)
                for name, pcoll in members
            ]
            selections.append(
                tuple(drawn)
                | f"Drawn {group}" >> beam.Flatten()
                | f"Draw {group}" >> beam.CombineGlobally(_Smallest(total))
                | f"Assign {group}" >> beam.Map(_assign, cases)
            )
        if not selections:
            selections.append(tagged[0].pipeline | "NoDraw" >> beam.Create([{}]))
        selection = tuple(selections) | "Selections" >> beam.Flatten() | "Selection" >> beam.CombineGlobally(_merge)
        tools = [
            pcoll | f"Tools {name}" >> beam.FlatMap(_pool_entries) | f"OnePerName {name}" >> beam.CombinePerKey(min)
            for (g, name), pcoll in zip(groups, tagged, strict=True)
            if g == "agent"
        ] or [tagged[0].pipeline | "NoTools" >> beam.Create([]).with_output_types(beam.typehints.KV[str, str])]
        pool = (
            tuple(tools)
            | "AllTools" >> beam.Flatten()
            | "OnePerName" >> beam.CombinePerKey(min)
            | "Pool" >> beam.combiners.ToList()
            | "Sorted"
            >> beam.Map(lambda entries: [ToolSpec.model_validate_json(j).model_dump() for _, j in sorted(entries)])
        )
        answers, system = self.books()
        maker = NegativeMaker(config, ctx, answers, system)
        outputs = records | "Build" >> beam.ParDo(
            RecordDoFn(maker, ctx.step_id),
            selection=beam.pvalue.AsSingleton(selection),
            pool=beam.pvalue.AsSingleton(pool),
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
                | "Prompts"
                >> beam.Map(lambda s: (s, s.messages[:-1]) if s.metadata["case"] != "general_with_tools" else (s, None))
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
        return {"responder": config.responder, "target": config.quotas(), "achieved": achieved}
