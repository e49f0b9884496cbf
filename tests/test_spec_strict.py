"""Specs under abuse (issue 15, items 12, 14 and 15): alias bombs, long errors, strict configs,
custom steps that break the step contract, Beam's import-time warning, and the demo's shard hash
quoted in the docs."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipelines.errors import MESSAGE_LIMIT, SpecError
from pipelines.graph import load_plan, load_spec
from pipelines.yaml_loader import MAX_EXPANDED_NODES, YamlLimitError, safe_load
from tests.conftest import DEMO_DATA, REPO

AGENTMILL = [sys.executable, "-m", "pipelines.cli"]


def agentmill(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH", "")]))
    return subprocess.run([*AGENTMILL, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error message of a failed command, unwrapped; asserts exit 2 and no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
    text = " ".join(lines)
    assert text.startswith("error:"), result.stderr
    return " ".join(text.split())


READ_CHAT_WRITE = f"""\
name: strict
audit: {{enabled: false}}
steps:
  - {{id: read, type: read, config: {{format: agentinstruct, paths: {DEMO_DATA / "agentinstruct_sample.jsonl"}}}}}
  - {{id: chat, type: to_chat, inputs: [read]{{chat}}}}
  - {{id: write, type: write, inputs: [chat]{{write}}}}
"""


def spec_file(tmp_path: Path, chat: str = "", write: str = "", seed: str = "") -> Path:
    text = READ_CHAT_WRITE.replace("{chat}", chat).replace("{write}", write)
    if seed:
        text = text.replace("name: strict\n", f"name: strict\nseed: {seed}\n")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


# --- item 12: alias expansion and error size ------------------------------------------------------

BILLION_LAUGHS = """\
name: bomb
steps:
  - id: read
    type: read
    config:
      format: sharegpt
      paths: [&a [l,l,l,l,l,l,l,l,l], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b],
              &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e],
              &g [*f,*f,*f,*f,*f,*f,*f,*f,*f], &h [*g,*g,*g,*g,*g,*g,*g,*g,*g], &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]]
  - {id: write, type: write, inputs: [read]}
"""


def test_a_billion_laughs_spec_is_refused_before_it_expands(tmp_path):
    assert len(BILLION_LAUGHS.encode()) < 600  # 9**9 (387 million) strings once expanded
    with pytest.raises(YamlLimitError, match="expands to more than"):
        safe_load(BILLION_LAUGHS)
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(SpecError, match=f"more than {MAX_EXPANDED_NODES:,} nodes through its aliases"):
        load_spec(str(path))
    message = one_line_error(agentmill("validate", str(path)))
    assert "aliases" in message and len(message) < 400


def test_aliases_of_ordinary_size_and_cycles():
    shared = safe_load("a: &cfg {x: 1, y: [1, 2]}\nb: *cfg\nc: *cfg\n")
    assert shared["b"] == shared["c"] == {"x": 1, "y": [1, 2]}
    with pytest.raises(YamlLimitError, match="refers to a node that contains it"):
        safe_load("a: &loop [1, *loop]\n")
    for spec in sorted((REPO / "pipelines").glob("*.yaml")):
        assert safe_load(spec.read_text()) == yaml.safe_load(spec.read_text()), spec.name


def test_error_messages_are_cut_to_a_readable_size(tmp_path):
    keys = ", ".join(f"unknown_{i}: 1" for i in range(300))
    path = spec_file(tmp_path, chat=f", config: {{{keys}}}")
    with pytest.raises(SpecError) as info:
        load_spec(str(path)) and load_plan(str(path))
    message = str(info.value)
    assert "unknown key 'unknown_0'" in message and "and 295 more error(s)" in message
    assert len(message) < 600
    huge = SpecError("spec.yaml", "x" * 1_000_000)
    assert len(str(huge)) < MESSAGE_LIMIT + 100 and str(huge).endswith("more characters]")


# --- item 14: one-line errors for a malformed step id and for custom steps -----------------------


@pytest.mark.parametrize("step_id", ["[a, b]", "{a: 1}"])
def test_a_list_or_mapping_as_step_id_is_a_one_line_error(tmp_path, step_id):
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: x\nsteps:\n  - {{id: {step_id}, type: read}}\n  - {{id: w, type: write, inputs: [r]}}\n")
    message = one_line_error(agentmill("validate", str(path)))
    assert "step '#1': id: Input should be a valid string" in message


BAD_STEPS = """
from schemas import Sample
from transforms.base import RecordStep, Step


class _Dict:
    def __call__(self, sample):
        return {"id": sample.id}


class _Str:
    def __call__(self, sample):
        return "a string"


class _Dicts:
    def __call__(self, sample):
        yield {"id": sample.id}


class ReturnsDict(RecordStep):
    input_type = Sample
    output_type = Sample

    def processor(self):
        return _Dict()


class ReturnsStr(ReturnsDict):
    def processor(self):
        return _Str()


class YieldsDicts(ReturnsDict):
    def processor(self):
        return _Dicts()


class RaisesInInit(ReturnsDict):
    def __init__(self, config=None, context=None):
        super().__init__(config, context)
        raise RuntimeError("model file not found")


class ExpandReturnsStr(Step):
    input_type = Sample
    output_type = Sample

    def expand(self, pcoll):
        return "nothing"
"""


@pytest.fixture(scope="module")
def bad_steps(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad_steps")
    (folder / "bad_steps.py").write_text(textwrap.dedent(BAD_STEPS))
    return folder


@pytest.mark.parametrize(
    ("step_class", "expected"),
    [
        ("ReturnsDict", "broke the step contract on 5 of 5 record(s): the processor returned a dict, not an iterable"),
        ("ReturnsStr", "broke the step contract on 5 of 5 record(s): the processor returned a str, not an iterable"),
        ("YieldsDicts", "broke the step contract on 5 of 5 record(s): the processor emitted a dict, not a Sample"),
        ("RaisesInInit", "could not be created: RuntimeError: model file not found"),
        ("ExpandReturnsStr", "its expand returned a str, not a dict of outputs"),
    ],
)
def test_a_broken_custom_step_is_a_one_line_error_naming_it(tmp_path, bad_steps, step_class, expected):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        READ_CHAT_WRITE.replace("{chat}", "")
        .replace("inputs: [chat]{write}", "inputs: [custom]")
        .replace(
            "  - {id: write", f"  - {{id: custom, type: 'bad_steps:{step_class}', inputs: [chat]}}\n  - {{id: write"
        )
    )
    out = tmp_path / "out"
    message = one_line_error(agentmill("run", str(spec), "--output", str(out), "-q", pythonpath=bad_steps))
    assert "step 'custom'" in message and expected in message
    assert not out.exists()


# --- item 15: strict configs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chat", "write", "seed", "expected"),
    [
        (', config: {require_supervised: "no"}', "", "", "require_supervised: Input should be a valid boolean"),
        (', config: {require_supervised: "false"}', "", "", "require_supervised: Input should be a valid boolean"),
        ("", ', config: {num_shards: "3"}', "", "num_shards: Input should be a valid integer"),
        ("", ", config: {num_shards: 3.0}", "", "num_shards: Input should be a valid integer"),
        ("", ", config: {num_shards: true}", "", "num_shards: Input should be a valid integer"),
        ("", "", '"7"', "seed: Input should be a valid integer"),
    ],
)
def test_configs_are_strict(tmp_path, chat, write, seed, expected):
    path = spec_file(tmp_path, chat, write, seed)
    with pytest.raises(SpecError, match=re.escape(expected)):
        load_plan(str(path))
    message = one_line_error(agentmill("validate", "--no-inputs", str(path)))
    assert expected in message and ("not the text" in message) == ('"' in chat + write + seed)


def test_strict_configs_keep_what_yaml_can_only_spell_as_text(tmp_path):
    path = spec_file(
        tmp_path, chat=", config: {require_supervised: false, kind: general}", write=", config: {num_shards: 2}"
    )
    plan = load_plan(str(path))
    assert plan.by_id["chat"].config.require_supervised is False  # a YAML boolean
    assert plan.by_id["chat"].config.kind == "general"  # an enum from its text
    assert plan.by_id["write"].config.num_shards == 2
    for spec in sorted((REPO / "pipelines").glob("*.yaml")):
        assert load_plan(str(spec)).steps, spec.name  # enum keys (balance weights), floats from ints


# --- item 15: Beam's import-time warning, and the demo's hash in the docs -------------------------


def test_no_apitools_warning_on_any_command(tmp_path):
    for args in (["--help"], ["validate", "--no-inputs", "pipelines/demo.yaml"], ["inspect", str(tmp_path)]):
        result = agentmill(*args)
        assert "apitools not found" not in result.stderr + result.stdout, args
    probe = subprocess.run(
        [sys.executable, "-c", "import pipelines.run, pipelines.cli"], cwd=REPO, capture_output=True, text=True
    )
    assert probe.returncode == 0 and "apitools not found" not in probe.stderr


#: Where the docs quote the demo's shard sha256 (a full hash or its first 8+ digits).
DEMO_HASH_QUOTES = {
    "docs/cli.md": r"sha256 `([0-9a-f]{8,64})(?:\.\.\.|…)?` for the demo",
    "docs/concepts.md": r"^([0-9a-f]{64})  /tmp/docs-demo",
    "docs/pipelines/demo.md": r"same shard, sha256\s+`([0-9a-f]{8,64})`",
}


def test_the_demo_shard_hash_quoted_in_the_docs_is_the_real_one(tmp_path):
    from pipelines.run import run_spec

    run_spec(str(REPO / "pipelines" / "demo.yaml"), str(tmp_path / "demo"))
    shards = sorted((tmp_path / "demo").glob("data-*.arrow"))
    assert len(shards) == 1
    real = hashlib.sha256(shards[0].read_bytes()).hexdigest()
    for doc, pattern in DEMO_HASH_QUOTES.items():
        quoted = re.findall(pattern, (REPO / doc).read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert quoted, f"{doc} no longer quotes the demo's hash where this test looks ({pattern})"
        for value in quoted:
            assert real.startswith(value), f"{doc} quotes {value}, the demo's shard is {real}"


def test_record_steps_fast_path_routes_and_counts_like_the_checked_path():
    """A record of the declared type followed by statistics skips ``_route``'s checks; what it
    emits and counts must be what the checked path (no declared type) emits and counts, and
    any other shape still goes through the checks."""
    from transforms.base import RecordDoFn, Stat

    def processor(record: int):
        if record % 2 == 0:
            return [(record,), Stat("seen", 1), Stat("weight", record)]  # the fast path
        return iter([(record,), (record, "twice"), Stat("seen", 1)])  # two outputs: the checked path

    runs = []
    for output_type in (None, tuple):
        fn = RecordDoFn(processor, "s", output_type=output_type)
        fn.start_bundle()
        runs.append(([fn.process(record) for record in range(6)], dict(fn.acct.counts)))
    assert runs[0] == runs[1]
    emitted, counts = runs[1]
    assert emitted[0] == [(0,)] and emitted[1] == [(1,), (1, "twice")]
    assert counts[("stat", "weight")] == 0 + 2 + 4 and counts[("stat", "seen")] == 6

    fn = RecordDoFn(lambda record: [(record,), Stat("seen", 1), "a str"], "s", output_type=tuple)
    fn.start_bundle()
    (rejected,) = fn.process(7)  # a wrong output after a record of the declared type is still refused
    assert '"reason":"step_contract"' in rejected.value[1]
