"""Step ``instruction_pairs``: format-following samples built from real agent steps.

Agent-FLAN keeps the format skill apart from agent reasoning with instruction-following pairs
that ask for ReAct or JSON output (2,000 in the paper, the default ``count``). Each pair is one
step drawn from the data (a thought plus a tool call): the user asks for it in a format (wording
from ``templates/instruction_pairs/default.yaml``), the assistant answers in exactly that format.

Guarantees: exactly ``min(count, available steps)`` pairs, chosen by a keyed hash ranking over
all steps (count, then select); the format is checked before emitting (the ReAct answer parses
back to the same thought, tool and arguments; the JSON answer parses to the same values);
trajectories that give no pair are filtered with the reason (``no_tool_step`` or
``not_selected``). Samples have kind ``instruction`` and part ``react``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import apache_beam as beam
from pydantic import Field

from schemas import Message, Role, Sample, Trajectory, Turn
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
from transforms.react import ParsedStep, StepParseError, has_markers, parse_turn, render_react
from transforms.samples import sample_of
from transforms.sampling import keyed_hash, rank_key
from transforms.spill import Merge

SLOTS = {"react_request", "json_request"}
EXAMPLE = {"thought": "I need the weather.", "tool": "get_weather", "arguments_json": '{"city": "Oslo"}'}


class InstructionPairsConfig(StepConfig):
    count: int = Field(2000, ge=0)
    formats: list[Literal["react", "json"]] = Field(default_factory=lambda: ["react", "json"], min_length=1)
    templates: str | None = None


def candidate_steps(trajectory: Trajectory) -> Iterator[tuple[str, ParsedStep]]:
    """(key, step) for every step with a thought and a tool call; unparseable turns are skipped."""
    for index, turn in enumerate(trajectory.turns):
        if turn.role is not Role.ASSISTANT or not turn.loss:
            continue
        try:
            steps = parse_turn(turn)
        except StepParseError:
            continue
        for number, step in enumerate(steps):
            if step.call is not None and step.thought and not has_markers(step.thought):
                yield f"{trajectory.id}:{index}.{number}", step


def format_answer(step: ParsedStep, fmt: str) -> str:
    assert step.call is not None
    if fmt == "react":
        return render_react(step)
    return json.dumps(
        {"thought": step.thought, "tool": step.call.name, "arguments": step.call.arguments}, ensure_ascii=False
    )


def check_format(step: ParsedStep, fmt: str, answer: str) -> None:
    """Raise RecordError unless ``answer`` holds exactly ``step`` in ``fmt``."""
    assert step.call is not None
    if fmt == "react":
        try:
            (parsed,) = parse_turn(Turn(role=Role.ASSISTANT, text=answer, loss=True))
        except (StepParseError, ValueError) as exc:
            raise RecordError("format_check_failed", f"ReAct answer does not parse: {exc}") from None
        ok = parsed.thought == step.thought and parsed.call == step.call
    else:
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as exc:
            raise RecordError("format_check_failed", f"JSON answer does not parse: {exc}") from None
        ok = value == {"thought": step.thought, "tool": step.call.name, "arguments": step.call.arguments}
    if not ok:
        raise RecordError("format_check_failed", f"{fmt} answer does not hold the step: {answer[:300]!r}")


class PairMaker:
    """Picklable processor: makes the pairs of the selected steps of one trajectory."""

    def __init__(self, config: InstructionPairsConfig, context: StepContext, book: dict[str, list[str]]) -> None:
        self.config = config
        self.context = context
        self.phrases = PhraseBook(book, context.seed, context.step_id)
        self._selected_list: list[str] | None = None
        self._selected: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_selected_list": None, "_selected": set()}

    def _pair(self, trajectory: Trajectory, key: str, step: ParsedStep) -> Sample:
        assert step.call is not None
        formats = self.config.formats
        fmt = formats[keyed_hash(self.context.seed, self.context.step_id, f"format:{key}") % len(formats)]
        arguments_json = json.dumps(step.call.arguments, ensure_ascii=False)
        request = self.phrases.render(
            f"{fmt}_request", key, thought=step.thought, tool=step.call.name, arguments_json=arguments_json
        )
        answer = format_answer(step, fmt)
        check_format(step, fmt, answer)
        messages = [
            Message(role=Role.USER, content=request, loss=False),
            Message(role=Role.ASSISTANT, content=answer, loss=True, part="react"),
        ]
        return sample_of(
            trajectory,
            messages,
            kind="instruction",
            derivation=f"instruction_pair:{fmt}",
            context=self.context,
            metadata={"format": fmt, "step_key": key},
            id_key=key,
        )

    def __call__(self, trajectory: Trajectory, selected: list[str]) -> Iterator[Any]:
        if selected is not self._selected_list:
            self._selected_list, self._selected = selected, set(selected)
        candidates = list(candidate_steps(trajectory))
        if not candidates:
            yield Filtered("no_tool_step", "no supervised step with a thought and a tool call")
            return
        chosen = [(key, step) for key, step in candidates if key in self._selected]
        if not chosen:
            yield Filtered("not_selected", f"{len(candidates)} candidate step(s), none drawn", keep_payload=False)
            return
        for key, step in chosen:
            try:
                sample = self._pair(trajectory, key, step)
            except PhrasingError as exc:
                raise RecordError("template_error", str(exc)) from None
            yield Stat(f"format:{sample.metadata['format']}", 1)
            yield sample


def _candidate_ranks(trajectory: Trajectory, seed: int, step_id: str) -> Iterable[tuple[tuple[int, str], str]]:
    return ((rank_key(seed, step_id, key), key) for key, _ in candidate_steps(trajectory))


class InstructionPairs(Step):
    """Format-following pairs drawn from real steps (see the module docstring)."""

    type_name = "instruction_pairs"
    config_model = InstructionPairsConfig
    input_type = Trajectory
    output_type = Sample

    def book(self) -> dict[str, list[str]]:
        return load_book(
            "instruction_pairs/default.yaml", self.config.templates, self.context.base_dir, {s: EXAMPLE for s in SLOTS}
        )

    def check(self) -> None:
        self.book()

    def expand(self, trajectories: beam.PCollection) -> dict[str, Any]:
        seed, step_id, count = self.context.seed, self.context.step_id, self.config.count
        if count == 0:
            selected = trajectories.pipeline | "NoDraw" >> beam.Create([[]])
        else:
            selected = (
                trajectories
                | "Candidates" >> beam.FlatMap(_candidate_ranks, seed, step_id)
                | "Draw" >> beam.combiners.Top.Smallest(count)
                | "Keys" >> beam.Map(lambda ranked: sorted(key for _, key in ranked))
            )
        maker = PairMaker(self.config, self.context, self.book())
        # The trajectories wait for the draw on disk, not in the runner's memory.
        waiting = trajectories | "AwaitDraw" >> Merge(self.context.spill_dir("records"), Trajectory)
        outputs = waiting | "Pairs" >> beam.ParDo(
            RecordDoFn(maker, step_id), selected=beam.pvalue.AsSingleton(selected)
        ).with_outputs(REJECTED, LEDGER, main=MAIN)
        return self._typed(outputs)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any] | None:
        assert isinstance(config, InstructionPairsConfig)
        formats = {k.split(":", 1)[1]: v for k, v in ledger.stats.items() if k.startswith("format:")}
        return {"target_count": config.count, "emitted": ledger.emitted, "by_format": formats}
