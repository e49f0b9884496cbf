"""Phrase books under limits (issue 15 items 11, 14, 15) and their fast path (issue 16 item 4).

Templates that would loop, grow or recurse without bound fail quickly with a message naming the
file and the slot, at validation and at run time; ``include``/``import`` and recursive macros
are one-line errors; a slot given twice is an error; the variables a template sees at run time
are of the types it is checked with. The fast path renders exactly what the sandbox renders.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from schemas import Role, Sample, ToolSpec, Trajectory, Turn, trajectory_id
from tests.conftest import DEMO_DATA, REPO
from tests.helpers import NO_AUDIT, write_spec
from transforms import align, instruction_pairs, negatives
from transforms.align import Align
from transforms.base import StepContext
from transforms.json_text import dumps_indented
from transforms.phrasing import Deferred, PhraseBook, PhrasingError, builtin_text, load_book, parse_book
from transforms.template_limits import MAX_ITERATIONS, MAX_OUTPUT_CHARS

# --- the fast path ------------------------------------------------------------------------------

SHIPPED = [
    ("align/default.yaml", align.SLOT_VARIABLES),
    ("instruction_pairs/default.yaml", instruction_pairs.SLOT_VARIABLES),
]
TRICKY = [
    "",
    "{braces} and {{ jinja }} {% raw %}",
    "naïve 😀 \u2028 \x00 tab\tend",
    "  padded  ",
    "%s %(x)s",
    "\n\nx\n",
]


def _negatives_variables() -> dict[str, dict[str, Any]]:
    book = parse_book(builtin_text("negatives/default.yaml"), "negatives")
    languages = negatives.book_languages(book)
    return {f"{lang}.{slot}": values for lang in languages for slot, values in negatives.LANGUAGE_SLOTS.items()}


def _variations(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The example variables, then each string variable replaced by tricky strings."""
    out = [values]
    for text in TRICKY:
        out.append({k: text if isinstance(v, str) else v for k, v in values.items()})
    return out


def _all_shipped() -> list[tuple[str, dict[str, list[str]], dict[str, dict[str, Any]]]]:
    books = [(name, parse_book(builtin_text(name), name), variables) for name, variables in SHIPPED]
    books.append(
        ("negatives/default.yaml", parse_book(builtin_text("negatives/default.yaml"), "n"), _negatives_variables())
    )
    return books


@pytest.mark.parametrize("name, book, variables", _all_shipped(), ids=lambda x: x if isinstance(x, str) else "")
def test_fast_path_renders_exactly_what_the_sandbox_renders(name, book, variables):
    fast, slow = PhraseBook(book, seed=3, step_id="s"), PhraseBook(book, seed=3, step_id="s", fast=False)
    fast_variants = 0
    for slot, values in variables.items():
        for index, variant in enumerate(fast._compiled[slot]):
            fast_variants += variant.pattern is not None
            for case in _variations(values):
                assert fast._render(slot, index, variant, case) == slow._render(
                    slot, index, slow._compiled[slot][index], case
                ), (name, slot, index, case)
    assert fast_variants > 0  # the shipped books do use the fast path


def test_fast_path_shapes():
    book = PhraseBook(
        {"plain": ["Go on."], "subst": ["I'll call {{ tool }} {now}."], "logic": ["{% if tool %}{{ tool }}{% endif %}"]}
    )
    compiled = book._compiled
    assert compiled["plain"][0].pattern == "Go on."
    assert compiled["subst"][0].pattern == "I'll call {tool} {{now}}."
    assert compiled["logic"][0].pattern is None
    assert book.render("subst", "k", tool="x") == "I'll call x {now}."
    with pytest.raises(PhrasingError, match="'tool' is undefined"):  # Jinja's own message
        book.render("subst", "k")


def test_deferred_variables_are_made_only_when_used_and_are_strings():
    made = []

    def make() -> dict[str, int]:
        made.append(1)
        return {"a": 1}

    book = PhraseBook({"s": ["plain"], "t": ["{{ x.upper() }}"]})
    assert book.render("s", "k", x=Deferred(make)) == "plain" and not made
    assert book.render("t", "k", x=Deferred(make)) == "{'A': 1}" and made == [1]


@pytest.mark.parametrize(
    "value",
    [{"city": "Oslo", "n": [1, 2.5, None, True, {}], "é": '😀\n"q"'}, [], {}, [float("nan"), 1e400, -0.0, 10**30]],
)
def test_indented_json_is_json_dumps(value):
    assert dumps_indented(value) == json.dumps(value, ensure_ascii=False, indent=2)


# --- item 11: limits ----------------------------------------------------------------------------

ABUSE = {
    "huge range": "{% for i in range(10**9) %}x{% endfor %}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(n=1000000) }}",
    "string repetition": "{{ 'a' * 10**10 }}",
    "padding": "{{ 'a'.ljust(10**9) }}",
    "center filter": "{{ 'a' | center(10**9) }}",
    "format width": "{{ '%999999999d' % 1 }}",
    "replace growth": "{{ ('a' * 100000).replace('', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb') }}",
    "namespace doubling": "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}"
    "{% endfor %}{{ ns.x | length }}",
    "macro doubling": "{% macro d(s, n) %}{% if n %}{{ d2(s ~ s, n - 1) }}{% endif %}{% endmacro %}"
    "{% macro d2(s, n) %}{{ d(s ~ s, n) }}{% endmacro %}{{ d('ab', 60) }}",
    "power": "{{ 10 ** 1000000000 }}",
}


@pytest.mark.parametrize("name", list(ABUSE))
def test_abusive_templates_fail_at_validation_naming_file_and_slot(tmp_path, name):
    (tmp_path / "mine.yaml").write_text(json.dumps({"tool": ["ok {{ tool }}", ABUSE[name]]}))
    with pytest.raises(PhrasingError, match=r"^mine\.yaml: slot 'tool' variant 1: ") as info:
        load_book("align/default.yaml", "mine.yaml", str(tmp_path), align.SLOT_VARIABLES)
    assert len(str(info.value)) < 400


def test_data_that_would_blow_a_template_up_fails_at_run_time_naming_the_slot():
    book = PhraseBook(parse_book('s: ["{% for a in xs %}{% for b in xs %}{{ a }}{% endfor %}{% endfor %}"]', "b.yaml"))
    assert book.render("s", "k", xs=list(range(3))) == "000111222"
    with pytest.raises(PhrasingError, match=rf"b\.yaml: slot 's' variant 0: .*limit of {MAX_ITERATIONS:,}"):
        book.render("s", "k", xs=list(range(1000)))
    plain = PhraseBook(parse_book('s: ["{{ x }}"]', "p.yaml"))  # the fast path keeps the size limit
    with pytest.raises(PhrasingError, match=rf"p\.yaml: slot 's'.*limit of {MAX_OUTPUT_CHARS:,} characters"):
        plain.render("s", "k", x="a" * (MAX_OUTPUT_CHARS + 1))


def test_random_output_is_not_available():
    for template in ("{{ [1, 2] | random }}", "{{ lipsum() }}"):
        with pytest.raises(PhrasingError):
            PhraseBook({"s": [template]}, samples={"s": {}})


# --- item 14: include, import, recursive macros -------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{% include 'other.yaml' %}",
        "{% import 'm.j2' as m %}{{ m.x }}",
        "{% from 'm.j2' import x %}{{ x }}",
        "{% extends 'base.j2' %}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "{% macro f(n) %}{{ g(n) }}{% endmacro %}{% macro g(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ],
)
def test_include_import_and_recursive_macros_are_one_line_errors(tmp_path, template):
    (tmp_path / "mine.yaml").write_text(json.dumps({"tool": [template]}))
    with pytest.raises(PhrasingError, match=r"^mine\.yaml: slot 'tool' variant 0: ") as info:
        load_book("align/default.yaml", "mine.yaml", str(tmp_path), align.SLOT_VARIABLES)
    assert "\n" not in str(info.value)


def test_cli_validate_exits_2_naming_file_and_slot(tmp_path):
    (tmp_path / "mine.yaml").write_text(json.dumps({"tool": ["{% include 'x' %}"]}))
    steps = [
        {
            "id": "read",
            "type": "read",
            "config": {"format": "agentinstruct", "paths": str(DEMO_DATA / "agentinstruct_sample.jsonl")},
        },
        {"id": "align", "type": "align", "inputs": ["read"], "config": {"templates": "mine.yaml"}},
        {"id": "write", "type": "write", "inputs": ["align"]},
    ]
    spec = write_spec(tmp_path, steps, audit=NO_AUDIT)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "validate", str(spec)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "mine.yaml: slot 'tool' variant 0" in " ".join(result.stderr.split())


# --- item 15: duplicate slots, same variable types ----------------------------------------------


def test_a_slot_given_twice_is_an_error(tmp_path):
    (tmp_path / "dup.yaml").write_text('tool: ["A {{ tool }}"]\nfinish: ["done"]\ntool: ["B {{ tool }}"]\n')
    with pytest.raises(PhrasingError, match=r"dup\.yaml: invalid YAML: 'tool' is given twice \(lines 1 and 3\)"):
        load_book("align/default.yaml", "dup.yaml", str(tmp_path), align.SLOT_VARIABLES)


def _call_trajectory() -> Trajectory:
    turns = [
        Turn(role=Role.USER, text="Weather in Oslo?", loss=False),
        Turn(role=Role.ASSISTANT, text='Thought: look.\nAction: get_weather\nAction Input: {"city": "Oslo"}'),
        Turn(role=Role.TOOL, text="snow", loss=False),
        Turn(role=Role.ASSISTANT, text="Thought: done.\nFinal Answer: It snows."),
    ]
    tool = ToolSpec(
        name="get_weather",
        description="Weather of a city.",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    return Trajectory(id=trajectory_id("t", "1", turns), source="t", source_id="1", turns=turns, tools=[tool])


def test_arguments_json_is_a_string_at_run_time_as_at_validation(tmp_path):
    # String methods pass validation (the example value is a string); they must work at run time.
    (tmp_path / "mine.yaml").write_text(json.dumps({"arguments": ["{{ arguments_json.strip() }}"]}))
    step = Align(
        {"templates": "mine.yaml", "keep_format_share": 0.0}, StepContext(step_id="align", base_dir=str(tmp_path))
    )
    step.check()
    outputs = list(step.processor()(_call_trajectory()))
    samples = [o for o in outputs if isinstance(o, Sample)]
    assert samples, outputs
    arguments = [m.content for m in samples[0].messages if m.part == "arguments"]
    assert arguments == ['{"city": "Oslo"}']


def test_negatives_and_instruction_pairs_books_are_limited_too(tmp_path):
    loop = "{% for i in range(10**9) %}x{% endfor %}"
    (tmp_path / "n.yaml").write_text(json.dumps({"en.help_general": [loop]}))
    with pytest.raises(PhrasingError, match=r"^n\.yaml: slot 'en\.help_general' variant 0: .*range of 1,000,000,000"):
        negatives.load_answer_book("n.yaml", str(tmp_path))
    (tmp_path / "i.yaml").write_text(json.dumps({"react_rules": [loop]}))
    with pytest.raises(PhrasingError, match=r"^i\.yaml: slot 'react_rules' variant 0: .*range of 1,000,000,000"):
        load_book("instruction_pairs/default.yaml", "i.yaml", str(tmp_path), instruction_pairs.SLOT_VARIABLES)


def test_large_numbers_that_are_not_sizes_render():
    book = PhraseBook({"s": ["{{ '{:,}'.format(n) }} / {{ n * 2 }} / {{ (n ~ '') | length }} / {{ 'ab'.center(6) }}"]})
    assert book.render("s", "k", n=123456789012) == "123,456,789,012 / 246913578024 / 12 /   ab"
