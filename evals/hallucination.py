"""Agent-H style hallucination evaluation (Agent-FLAN, METHOD.md observation 3).

Cases: {tools given, no tools} x {query needs a tool, normal query}. On items whose right
answer is plain text (every case but ``positive``):

- H_ReAct = share of responses containing a ReAct keyword (default ``Thought:``, ``Action:``);
- H_General = share containing a tool-use phrase (default "I will use", "I need to call", ...);
- HScore = ((1 - H_ReAct) + (1 - H_General)) / 2.

On ``positive`` items (tools given, the query needs one) the score is the share of responses
that call the expected tool: its name appears in the response. Keyword lists are configurable
(a YAML/JSON file with ``react_keywords`` and ``general_phrases``); matching is case-sensitive
for ReAct keywords and case-insensitive for phrases.

Items come from an agentmill output directory: negatives (their ``metadata.case``), general
samples (``no_tools_normal_query``) and aligned agent samples whose first assistant turn after
the query chooses a tool (``positive``). The prompt is every message before that assistant turn.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from schemas import ArrowCodec, Message, Role, Sample

POSITIVE = "positive"
CASE_NAMES = {
    "no_tools": "no tools + needs a tool",
    "irrelevant_tools": "irrelevant tools + needs a tool",
    "general_with_tools": "tools + normal query",
    "no_tools_normal_query": "no tools + normal query",
    POSITIVE: "tools + needs a tool",
}


class Keywords(BaseModel):
    model_config = ConfigDict(extra="forbid")

    react_keywords: list[str] = Field(default_factory=lambda: ["Thought:", "Action:"])
    general_phrases: list[str] = Field(
        default_factory=lambda: [
            "I will use",
            "I need to call",
            "I'll use",
            "I will call",
            "I need to use",
            "let me call",
            "let me use",
        ]
    )

    @classmethod
    def load(cls, path: str | None) -> Keywords:
        if not path:
            return cls()
        with open(path, encoding="utf-8") as handle:
            return cls.model_validate(yaml.safe_load(handle) or {})


@dataclass(frozen=True)
class EvalItem:
    id: str
    case: str
    prompt: list[Message] = field(default_factory=list)
    expected_tool: str | None = None


def item_of(sample: Sample) -> EvalItem | None:
    """The evaluation item of one sample, or ``None`` if the sample is not an eval case."""
    messages = sample.messages
    first_assistant = next((i for i, m in enumerate(messages) if m.role is Role.ASSISTANT and m.loss), None)
    if first_assistant is None:
        return None
    prompt = list(messages[:first_assistant])
    if not prompt or prompt[-1].role is not Role.USER:
        return None
    if sample.kind == "negative":
        return EvalItem(sample.id, str(sample.metadata.get("case")), prompt)
    if sample.kind == "general" and not sample.tools:
        return EvalItem(sample.id, "no_tools_normal_query", prompt)
    if sample.kind == "agent" and sample.lineage.derivation == "align" and sample.tools:
        target = messages[first_assistant]
        following = messages[first_assistant : first_assistant + 5]
        tool = next((m.tool_calls[0].name for m in following if m.part == "arguments" and m.tool_calls), None)
        if tool and target.part in ("thought", "tool"):
            return EvalItem(sample.id, POSITIVE, prompt, tool)
    return None


def items_from_dir(directory: str, per_case: int | None = None) -> list[EvalItem]:
    """Eval items of an agentmill output directory, at most ``per_case`` per case (in id order)."""
    import datasets

    codec = ArrowCodec(Sample)
    items: list[EvalItem] = []
    for row in datasets.load_from_disk(directory):
        item = item_of(codec.from_row(row))
        if item is not None:
            items.append(item)
    items.sort(key=lambda i: (i.case, i.id))
    if per_case is not None:
        taken: Counter[str] = Counter()
        kept = []
        for item in items:
            if taken[item.case] < per_case:
                taken[item.case] += 1
                kept.append(item)
        items = kept
    return items


def hallucinates_react(response: str, keywords: Keywords) -> bool:
    return any(k in response for k in keywords.react_keywords)


def hallucinates_general(response: str, keywords: Keywords) -> bool:
    lowered = response.lower()
    return any(p.lower() in lowered for p in keywords.general_phrases)


def score(pairs: Iterable[tuple[str, str, str | None]], keywords: Keywords | None = None) -> dict[str, Any]:
    """Scores from ``(case, response, expected tool)`` triples."""
    keywords = keywords or Keywords()
    per_case: dict[str, dict[str, float]] = {}
    negatives = react = general = 0
    positives = correct = 0
    counts: Counter[str] = Counter()
    case_react: Counter[str] = Counter()
    case_general: Counter[str] = Counter()
    case_correct: Counter[str] = Counter()
    for case, response, expected in pairs:
        counts[case] += 1
        if case == POSITIVE:
            positives += 1
            hit = bool(expected) and expected in response
            correct += hit
            case_correct[case] += hit
            continue
        negatives += 1
        r, g = hallucinates_react(response, keywords), hallucinates_general(response, keywords)
        react += r
        general += g
        case_react[case] += r
        case_general[case] += g
    for case, n in sorted(counts.items()):
        if case == POSITIVE:
            per_case[case] = {"n": n, "correct_call": round(case_correct[case] / n, 4)}
        else:
            per_case[case] = {
                "n": n,
                "h_react": round(case_react[case] / n, 4),
                "h_general": round(case_general[case] / n, 4),
            }
    result: dict[str, Any] = {"cases": per_case, "keywords": keywords.model_dump()}
    if negatives:
        h_react, h_general = react / negatives, general / negatives
        result.update(
            h_react=round(h_react, 4),
            h_general=round(h_general, 4),
            hscore=round(((1 - h_react) + (1 - h_general)) / 2, 4),
            n_plain_text=negatives,
        )
    if positives:
        result.update(positive_correct_call=round(correct / positives, 4), n_positive=positives)
    return result


def read_responses(path: str) -> list[dict[str, Any]]:
    """Lines of ``{"id", "response"}`` (joined with --data) or ``{"case", "response", "expected_tool"?}``."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON: {exc}") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("response"), str):
                raise ValueError(f"{path}:{number}: each line needs a string 'response'")
            if "case" not in entry and "id" not in entry:
                raise ValueError(f"{path}:{number}: each line needs an 'id' (with --data) or a 'case'")
            entries.append(entry)
    return entries


def pairs_from_responses(
    entries: Sequence[dict[str, Any]], items: Sequence[EvalItem] | None
) -> list[tuple[str, str, str | None]]:
    by_id = {item.id: item for item in items or []}
    pairs = []
    for entry in entries:
        if "case" in entry:
            pairs.append((str(entry["case"]), entry["response"], entry.get("expected_tool")))
            continue
        item = by_id.get(entry["id"])
        if item is None:
            raise ValueError(f"response id {entry['id']!r} is not an item of the data (pass --data DIR)")
        pairs.append((item.case, entry["response"], item.expected_tool))
    return pairs


def generate(model_path: str, items: Sequence[EvalItem], max_new_tokens: int = 64, device: str = "cpu") -> list[str]:
    """Greedy answers of a local model to every item's prompt (with its chat template), in item order.

    The same generation as the ``negatives`` step's ``model`` responder (:mod:`inference.generation`).
    """
    from inference.generation import generate_texts

    return generate_texts(model_path, [item.prompt for item in items], max_new_tokens, device)
