"""Step ``reward_filter``: Trajectory -> Trajectory, AgentTuning's trajectory filtering.

A trajectory is kept when every enabled check passes; otherwise it is filtered with the reason
of the first failing check, in this order:

1. ``missing_reward``: no reward at ``reward_field`` (policy ``missing_reward``: ``drop`` filters
   it, ``keep`` lets it through to the other checks, ``dead_letter`` makes it a dead letter);
   ``invalid_reward`` (dead letter) when the value is not a finite number;
2. ``below_threshold``: reward < the threshold of the trajectory's task (default 1.0; mind2web
   2/3; babyai 0.1, the lowest reward of a successful AgentGym BabyAI episode);
3. ``unsuccessful`` (check ``success``): the trajectory's ``success`` flag is false, whatever
   its reward (a shaped reward can clear a threshold on a failed episode). A missing flag
   passes; tasks listed in ``ignore_success_flag`` skip the check (for a source whose flag is
   known not to be recorded, e.g. AgentGym's BabyAI rollouts, always 0);
4. ``repeated_output``: the agent gives the same output ``repeat_limit`` (3) times in a row;
5. ``invalid_action``: more than ``max_invalid_actions`` (0) environment turns say that the
   agent's action was malformed or unknown: it could not be parsed ("No executable function
   found", "Invalid action"), names no command of the environment (TextCraft "Could not
   execute ...", BabyAI "The action is not recognized") or breaks the output format ("Only one
   'Action' is allowed"), writes the environment's answers itself (TextCraft "Got 8 glass" in
   an agent output) or is empty. An environment refusing a well-formed action is an
   observation, not an invalid action: ALFWorld "Nothing happens." after a well-formed command, TextCraft "Could
   not find ...", BabyAI "You cannot ...", "No change in state" after a well-formed action
   never count;
6. ``ungrounded_output`` (check ``grounded``, tasks in ``grounded_tasks``, default Mind2Web): an
   agent output's thought quotes or names something (a phrase in quotes, a capitalised name
   inside a sentence) that no earlier turn of the episode contains: it was written for another
   episode. AgentInstruct's released Mind2Web answers include thoughts about "Dish Outdoor" deals
   for a glamping task and "Frosthaven" for a Thai restaurant, with answers to match;
7. ``inconsistent_choice`` (check ``choice``, tasks in ``choice_tasks``, default Mind2Web): an
   agent output's multiple-choice answer contradicts the choices it was given: a letter not
   offered, an action on "None of the above", TYPE into a link, SELECT on a button, a typed value
   that no earlier turn contains (:mod:`transforms.choice_answers`);
8. ``no_final_answer``: the task defines a final answer and the episode does not end with one.

"Agent outputs" are the supervised (``loss=true``) assistant turns; "environment turns" are the
user and tool turns after the first agent output, so task prompts and in-context examples never
count. Every violated check, not only the reported one, adds to the stat ``violation:<reason>``;
``task_in:<task>`` / ``task_kept:<task>`` / ``task_filtered:<task>:<reason>`` feed the manifest
summary. Filtered trajectories are also sent to the ``rejected`` port (a pool for negative
samples) unless ``rejected_port`` is off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import Role, Trajectory, Turn, canonical_json
from transforms.base import Filtered, RecordError, RecordStep, Stat, StepConfig
from transforms.choice_answers import DEFAULT_OPERATIONS, choice_problem

Check = Literal["reward", "success", "repeated_output", "invalid_action", "grounded", "choice", "final_answer"]
ALL_CHECKS: tuple[Check, ...] = (
    "reward",
    "success",
    "repeated_output",
    "invalid_action",
    "grounded",
    "choice",
    "final_answer",
)
ANY_TASK = "*"
REJECTED_PORT = "rejected"

#: Per-task reward thresholds (AgentTuning: 1.0 everywhere but Mind2Web; AgentGym BabyAI gives
#: ``1 - 0.9 * steps / max_steps`` on success and 0 on failure, so success is reward >= 0.1).
DEFAULT_THRESHOLDS: dict[str, float] = {"mind2web": 2 / 3, "babyai": 0.1}

#: ALFWorld's commands (its admissible-command templates); other text sent as an action is unknown.
ALFWORLD_COMMAND = (
    r"^\s*(?:ACTION:\s*)?(?:go to|take|put|open|close|toggle|clean|heat|cool|use|examine|look|inventory)\b"
)

#: Rules (regexes, case-insensitive, multi-line) that mark an environment turn as "your action
#: was malformed or unknown" (never "your well-formed action did not work"). ``*`` applies to
#: every task. A rule is a regex on the environment turn, or ``{observation, unless_output}``:
#: the turn counts unless the agent output it answers matches ``unless_output`` (a well-formed
#: action), for environments whose answer is the same to a malformed action and to a valid one
#: that changes nothing. TextCraft answers "Could not execute <action>" exactly when the action
#: matches none of its commands (craft / get <n> / inventory; AgentGym's
#: agentenv_textcraft/environment.py), and "Could not extract recipe" / "Wrong item format" when a
#: craft command cannot be parsed. BabyAI answers "No change in state" both to an output it
#: cannot parse (``**Action:** turn left``, an empty output) and to a valid no-op; ALFWorld
#: answers "Nothing happens." both to a command the world refuses (``open drawer 9`` when there
#: is none: an observation) and to a text that is no command (``ACTION: Task succeeded.``).
DEFAULT_INVALID_ACTION_PATTERNS: dict[str, list[str | dict[str, str]]] = {
    ANY_TASK: [r"^\s*Invalid action\b", r"No executable function found"],
    "alfworld": [
        {
            "observation": r"^\s*Nothing happens\b",
            "unless_output": ALFWORLD_COMMAND,
        }
    ],
    "babyai": [
        r"The action is not recognized",
        r"Only one 'Action' is allowed",
        {"observation": r"^\s*No change in state\b", "unless_output": r"^\s*Action:\s*\S"},
    ],
    "textcraft": [r"^\s*Could not execute\b", r"^\s*Could not extract recipe\b", r"^\s*Wrong item format\b"],
    "sciworld": [r"No known action matches that input"],
}

#: Regexes (case-insensitive, multi-line) that mark an agent output itself as malformed: it writes
#: the environment's answers (an invented observation), so it holds more than one action. TextCraft
#: agents imitate the demo and write "Got 8 glass" / "Crafted 1 minecraft:..." themselves.
DEFAULT_INVALID_OUTPUT_PATTERNS: dict[str, list[str]] = {
    "textcraft": [r"^\s*(?:Got \d+ |Crafted \d+ minecraft:|Could not (?:find|execute)\b|Inventory: )"],
}

#: What counts as a final answer, per task (see docs/transforms/reward_filter.md).
DEFAULT_FINAL_ANSWERS: dict[str, dict[str, str]] = {
    "webshop": {"pattern": r"click\[\s*buy now\s*\]", "where": "last_output"},
    "os": {"pattern": r"Act:\s*(answer\(|finish\b)", "where": "last_output"},
    "db": {"pattern": r"Action:\s*Answer\b|Final Answer\s*:", "where": "last_output"},
    "kg": {"pattern": r"Final Answer\s*:", "where": "last_output"},
    "babyai": {"pattern": r"The task is completed", "where": "last_observation"},
    "textcraft": {"pattern": r"^\s*Crafted \d+ minecraft:", "where": "last_observation"},
}

#: Tasks whose agent outputs may name only what the episode showed (check ``grounded``).
DEFAULT_GROUNDED_TASKS: tuple[str, ...] = ("mind2web",)

#: A thought: the text after a thought marker, up to the next line that opens with a marker.
_THOUGHT = re.compile(
    r"^[ \t>*]*(?:Thought|THOUGHT|Think)[ \t]*:(.*?)(?=^[ \t]*[A-Za-z][A-Za-z ]{0,20}:|\Z)", re.M | re.S
)
#: Names in a thought: quoted phrases (an apostrophe inside a word is no quote) and runs of
#: capitalised words inside a sentence (not at its start, not inside quotes).
_QUOTED = re.compile(r"\"([^\"\n]{2,60})\"|“([^”\n]{2,60})”|(?<!\w)'([^'\n]{2,60})'(?!\w)")
_CAPITALISED = re.compile(r"(?<![\w'\"“-])[A-Z][A-Za-z0-9&-]+(?: [A-Z][A-Za-z0-9&-]*)*")

#: Tasks whose agent outputs answer lettered choices (check ``choice``).
DEFAULT_CHOICE_TASKS: tuple[str, ...] = ("mind2web",)

THRESHOLD_TOLERANCE = 1e-9


class FinalAnswerRule(BaseModel):
    """A final answer: ``pattern`` found in the last agent output or the last environment turn."""

    model_config = ConfigDict(extra="forbid")

    pattern: str
    where: Literal["last_output", "last_observation"] = "last_output"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        _compile(value)
        return value


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


class InvalidActionRule(BaseModel):
    """An environment turn matching ``observation`` marks an invalid action, unless the agent
    output it answers matches ``unless_output`` (the action was well-formed)."""

    model_config = ConfigDict(extra="forbid")

    observation: str
    unless_output: str | None = None

    @field_validator("observation", "unless_output")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value


class RewardFilterConfig(StepConfig):
    """Config of ``reward_filter``; per-task maps are merged over the defaults (a task given here
    replaces that task's default; ``[]`` / ``null`` switch a default off for that task)."""

    reward_field: str = "reward"
    default_threshold: float = 1.0
    thresholds: dict[str, float] = Field(default_factory=dict)
    missing_reward: Literal["drop", "keep", "dead_letter"] = "drop"
    ignore_success_flag: list[str] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=lambda: list(ALL_CHECKS))
    repeat_limit: int = Field(3, ge=2)
    repeat_scope: Literal["output", "output_and_observation"] = "output"
    invalid_action_patterns: dict[str, list[str | InvalidActionRule]] = Field(default_factory=dict)
    invalid_output_patterns: dict[str, list[str]] = Field(default_factory=dict)
    empty_output_is_invalid: bool = True
    max_invalid_actions: int = Field(0, ge=0)
    final_answer: dict[str, FinalAnswerRule | None] = Field(default_factory=dict)
    grounded_tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUNDED_TASKS))
    choice_tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_CHOICE_TASKS))
    choice_operations: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_OPERATIONS), min_length=1)
    rejected_port: bool = True

    @field_validator("reward_field")
    @classmethod
    def _reward_path(cls, value: str) -> str:
        if value not in ("reward", "success") and not (value.startswith("metadata.") and len(value) > 9):
            raise ValueError("reward_field must be 'reward', 'success' or 'metadata.<key>'")
        return value

    @field_validator("choice_operations")
    @classmethod
    def _operations_upper(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if any(not op.isalpha() or op != op.upper() for op in value):
            raise ValueError("choice_operations keys are operations in capitals (CLICK, TYPE, SELECT)")
        return {op: [tag.lower() for tag in tags] for op, tags in value.items()}

    @field_validator("invalid_output_patterns")
    @classmethod
    def _output_patterns_compile(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for patterns in value.values():
            for pattern in patterns:
                _compile(pattern)
        return value

    @field_validator("invalid_action_patterns")
    @classmethod
    def _patterns_compile(
        cls, value: dict[str, list[str | InvalidActionRule]]
    ) -> dict[str, list[str | InvalidActionRule]]:
        for patterns in value.values():
            for pattern in patterns:
                if isinstance(pattern, str):
                    _compile(pattern)
        return value

    @model_validator(mode="after")
    def _unique_checks(self) -> RewardFilterConfig:
        if len(set(self.checks)) != len(self.checks):
            raise ValueError("checks must not repeat")
        return self

    def threshold_of(self, task: str | None) -> float:
        merged = {**DEFAULT_THRESHOLDS, **self.thresholds}
        return merged.get(task or "", self.default_threshold)

    def invalid_patterns(self) -> dict[str, list[InvalidActionRule]]:
        merged = {**DEFAULT_INVALID_ACTION_PATTERNS, **self.invalid_action_patterns}
        return {
            task: [
                InvalidActionRule(observation=rule) if isinstance(rule, str) else InvalidActionRule.model_validate(rule)
                for rule in rules
            ]
            for task, rules in merged.items()
        }

    def output_patterns(self) -> dict[str, list[str]]:
        return {**DEFAULT_INVALID_OUTPUT_PATTERNS, **self.invalid_output_patterns}

    def final_answers(self) -> dict[str, FinalAnswerRule]:
        merged: dict[str, FinalAnswerRule | None] = {
            task: FinalAnswerRule.model_validate(rule) for task, rule in DEFAULT_FINAL_ANSWERS.items()
        }
        merged.update(self.final_answer)
        return {task: rule for task, rule in merged.items() if rule is not None}


@dataclass(frozen=True)
class Episode:
    """The parts of a trajectory the checks look at."""

    outputs: list[str]  # normalised agent outputs, in order
    raw_outputs: list[str]  # the same outputs' text as written
    observations_after: list[str | None]  # normalised environment text after each output
    observations: list[str]  # raw environment turns after the first agent output
    answered: list[str]  # the raw agent output each of those environment turns answers


def _norm(text: str) -> str:
    return " ".join(text.split())


def _output_text(turn: Turn) -> str:
    text = _norm(turn.text)
    for call in turn.tool_calls:  # name and arguments; ids are bookkeeping, not behaviour
        text += "\x1f" + canonical_json(call.model_dump(mode="json", exclude={"id"}))
    return text


def episode(trajectory: Trajectory) -> Episode:
    """Split a trajectory into agent outputs (supervised assistant turns) and environment turns."""
    outputs: list[str] = []
    raw: list[str] = []
    after: list[list[str]] = []
    observations: list[str] = []
    answered: list[str] = []
    for turn in trajectory.turns:
        if turn.role is Role.ASSISTANT and turn.loss:
            outputs.append(_output_text(turn))
            raw.append(turn.text)
            after.append([])
        elif turn.role in (Role.USER, Role.TOOL) and outputs:
            observations.append(turn.text)
            answered.append(raw[-1])
            after[-1].append(_norm(turn.text))
    return Episode(outputs, raw, [" ".join(parts) if parts else None for parts in after], observations, answered)


def longest_repeat(ep: Episode, scope: str = "output") -> tuple[int, str]:
    """Length and text of the longest run of identical consecutive agent outputs.

    With ``scope="output_and_observation"`` a run also needs identical environment responses
    between its outputs (the agent is stuck in a loop, not e.g. crafting three ingots).
    """
    best, best_text, run = 0, "", 0
    for i, output in enumerate(ep.outputs):
        same = i > 0 and output == ep.outputs[i - 1]
        if same and scope == "output_and_observation" and i >= 2:
            same = ep.observations_after[i - 1] == ep.observations_after[i - 2]
        run = run + 1 if same else 1
        if run > best:
            best, best_text = run, output
    return best, best_text


CompiledRule = tuple[re.Pattern[str], re.Pattern[str] | None]  # (observation, unless_output)


def invalid_actions(
    ep: Episode,
    rules: list[CompiledRule],
    empty_is_invalid: bool = False,
    output_patterns: list[re.Pattern[str]] | None = None,
) -> list[str]:
    """The invalid actions of an episode, described by their first 120 characters: environment
    turns that match a rule's observation (and whose answered output does not match its
    ``unless_output``); agent outputs that match one of ``output_patterns``; then, with
    ``empty_is_invalid``, empty agent outputs."""
    hits = []
    for text, output in zip(ep.observations, ep.answered, strict=True):
        for observation, unless in rules:
            if observation.search(text) and (unless is None or not unless.search(output)):
                hits.append(text[:120])
                break
    for output in ep.raw_outputs:
        for pattern in output_patterns or []:
            found = pattern.search(output)
            if found:
                hits.append(f"(output writes {found.group(0).strip()!r})")
                break
    if empty_is_invalid:
        hits += ["(empty output)" for output in ep.outputs if not output]
    return hits


def thought_names(text: str) -> list[str]:
    """The quoted phrases and in-sentence capitalised names of ``text``'s thoughts."""
    names: list[str] = []
    for thought in _THOUGHT.findall(text):
        names += [next(g for g in groups if g) for groups in _QUOTED.findall(thought)]
        unquoted = _QUOTED.sub('""', thought)
        for match in _CAPITALISED.finditer(unquoted):
            before = unquoted[: match.start()].rstrip(" \t")
            if before and before[-1] not in ".!?:\n\"'“":
                names.append(match.group(0))
    return names


def ungrounded_names(trajectory: Trajectory) -> tuple[int, list[str]] | None:
    """``(turn index, names)`` of the first agent output whose thought names something no earlier
    turn contains (case-insensitive, trailing punctuation ignored), else ``None``."""
    seen: list[str] = []
    for index, turn in enumerate(trajectory.turns):
        if turn.role is Role.ASSISTANT and turn.loss:
            names = thought_names(turn.text)
            if names:
                before = "\n".join(seen)
                missing = [n for n in names if n.strip(" .,;:!?").lower() not in before]
                if missing:
                    return index, missing
        seen.append(turn.text.lower())
    return None


def has_final_answer(ep: Episode, where: str, pattern: re.Pattern[str]) -> bool:
    """Whether the last agent output (``where="last_output"``) or the last environment turn
    (``"last_observation"``) matches ``pattern``."""
    if where == "last_output":
        text = ep.raw_outputs[-1] if ep.raw_outputs else ""
    else:
        text = ep.observations[-1] if ep.observations else ""
    return pattern.search(text) is not None


def read_reward(trajectory: Trajectory, field: str) -> float | None:
    """The reward at ``field``: ``reward``, ``success`` (true=1, false=0) or ``metadata.<path>``.

    Raises :class:`RecordError` (``invalid_reward``) for a value that is not a finite number.
    """
    if field == "reward":
        value: Any = trajectory.reward
    elif field == "success":
        value = trajectory.success
    else:
        value = trajectory.metadata
        for part in field.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    raise RecordError("invalid_reward", f"{field} is {value!r}, not a finite number")


class Verdict:
    """Outcome of the checks: the violated rules in check order, with details."""

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def add(self, reason: str, detail: str) -> None:
        self.violations.append((reason, detail))

    @property
    def kept(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Rules:
    """A config's per-task regexes, compiled once per worker."""

    invalid: dict[str, list[CompiledRule]]
    final: dict[str, tuple[str, re.Pattern[str]]]  # task -> (where, pattern)
    outputs: dict[str, list[re.Pattern[str]]]

    @classmethod
    def of(cls, config: RewardFilterConfig) -> Rules:
        invalid = {
            task: [(_compile(r.observation), _compile(r.unless_output) if r.unless_output else None) for r in rules]
            for task, rules in config.invalid_patterns().items()
        }
        final = {task: (rule.where, _compile(rule.pattern)) for task, rule in config.final_answers().items()}
        outputs = {task: [_compile(p) for p in patterns] for task, patterns in config.output_patterns().items()}
        return cls(invalid, final, outputs)


def judge(trajectory: Trajectory, config: RewardFilterConfig | None = None, rules: Rules | None = None) -> Verdict:
    """Run every enabled check on ``trajectory`` (the pure function behind the step).

    Raises :class:`RecordError` for a missing reward under ``missing_reward: dead_letter`` and
    for an invalid reward value.
    """
    config = config or RewardFilterConfig()
    rules = rules or Rules.of(config)
    verdict = Verdict()
    checks = set(config.checks)
    task = trajectory.task
    if "reward" in checks:
        reward = read_reward(trajectory, config.reward_field)
        if reward is None:
            if config.missing_reward == "dead_letter":
                raise RecordError("missing_reward", f"no reward at {config.reward_field!r}")
            if config.missing_reward == "drop":
                verdict.add("missing_reward", f"no reward at {config.reward_field!r}")
        else:
            threshold = config.threshold_of(task)
            if reward < threshold - THRESHOLD_TOLERANCE:
                verdict.add("below_threshold", f"reward {reward:g} < threshold {threshold:g} (task {task!r})")
    if "success" in checks and trajectory.success is False and (task or "") not in config.ignore_success_flag:
        reward_text = "no reward" if trajectory.reward is None else f"reward {trajectory.reward:g}"
        verdict.add("unsuccessful", f"success is false ({reward_text}, task {task!r})")
    ep = episode(trajectory)
    if "repeated_output" in checks:
        run, text = longest_repeat(ep, config.repeat_scope)
        if run >= config.repeat_limit:
            verdict.add("repeated_output", f"the same output {run} times in a row: {text[:160]!r}")
    if "invalid_action" in checks:
        patterns = rules.invalid.get(ANY_TASK, []) + (rules.invalid.get(task, []) if task else [])
        written = rules.outputs.get(ANY_TASK, []) + (rules.outputs.get(task, []) if task else [])
        hits = invalid_actions(ep, patterns, config.empty_output_is_invalid, written)
        if len(hits) > config.max_invalid_actions:
            allowed = config.max_invalid_actions
            verdict.add("invalid_action", f"{len(hits)} invalid action(s), {allowed} allowed; first: {hits[0]!r}")
    if "grounded" in checks and task in config.grounded_tasks:
        found = ungrounded_names(trajectory)
        if found is not None:
            index, names = found
            verdict.add("ungrounded_output", f"turn {index} names {names[:3]!r}, which no earlier turn shows")
    if "choice" in checks and task in config.choice_tasks:
        problem = choice_problem(trajectory, config.choice_operations)
        if problem is not None:
            index, why = problem
            verdict.add("inconsistent_choice", f"turn {index}: {why}")
    if "final_answer" in checks and task and task in rules.final:
        where, pattern = rules.final[task]
        if not has_final_answer(ep, where, pattern):
            verdict.add("no_final_answer", f"task {task!r}: the {where} does not match {pattern.pattern!r}")
    return verdict


class RewardFilterFn:
    """Picklable processor: runs :func:`judge` and turns the verdict into outcomes."""

    def __init__(self, config: RewardFilterConfig) -> None:
        self.config = config
        self.rules: Rules | None = None

    def setup(self) -> None:
        self.rules = Rules.of(self.config)

    def __call__(self, trajectory: Trajectory) -> Iterator[Any]:
        if self.rules is None:
            self.setup()
        task = trajectory.task or ""
        yield Stat(f"task_in:{task}", 1)
        verdict = judge(trajectory, self.config, self.rules)
        for reason, _ in verdict.violations:
            yield Stat(f"violation:{reason}", 1)
        if verdict.kept:
            yield Stat(f"task_kept:{task}", 1)
            yield trajectory
            return
        reason, detail = verdict.violations[0]
        yield Stat(f"task_filtered:{task}:{reason}", 1)
        others = [r for r, _ in verdict.violations[1:]]
        if others:
            detail += f" (also: {', '.join(others)})"
        yield Filtered(reason, detail, port=REJECTED_PORT if self.config.rejected_port else None)


class RewardFilter(RecordStep):
    """Keeps trajectories that meet their task's reward threshold and the AgentTuning rules."""

    type_name = "reward_filter"
    config_model = RewardFilterConfig
    input_type = Trajectory
    output_type = Trajectory
    extra_outputs: ClassVar[dict[str, type]] = {REJECTED_PORT: Trajectory}

    def processor(self) -> RewardFilterFn:
        return RewardFilterFn(self.config)

    @classmethod
    def summarize(cls, config: StepConfig, ledger: Any) -> dict[str, Any]:
        assert isinstance(config, RewardFilterConfig)
        tasks = sorted({k.split(":", 1)[1] for k in ledger.stats if k.startswith("task_in:")})
        per_task = {}
        for task in tasks:
            seen = ledger.stats.get(f"task_in:{task}", 0)
            kept = ledger.stats.get(f"task_kept:{task}", 0)
            prefix = f"task_filtered:{task}:"
            filtered = {k[len(prefix) :]: v for k, v in sorted(ledger.stats.items()) if k.startswith(prefix)}
            per_task[task or "(none)"] = {
                "threshold": config.threshold_of(task or None) if "reward" in config.checks else None,
                "in": seen,
                "kept": kept,
                "kept_share": round(kept / seen, 6) if seen else None,
                "filtered": filtered,
            }
        violations = {k.split(":", 1)[1]: v for k, v in sorted(ledger.stats.items()) if k.startswith("violation:")}
        return {"tasks": per_task, "violations": violations}


__all__ = ["RewardFilter", "RewardFilterConfig", "episode", "judge", "longest_repeat"]
