"""A spec is loaded, checked and planned without importing Beam (``agentmill validate``), and
what that path does in Beam's place gives Beam's answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from transforms.files import _pattern_regex, match_local

REPO = Path(__file__).resolve().parents[1]
SPECS = [
    "pipelines/demo.yaml",
    "pipelines/agent_flan.yaml",
    "pipelines/function_calling.yaml",
    "pipelines/agenttuning.yaml",
]

PATTERNS = [
    "*.jsonl",
    "**.jsonl",
    "**/*.jsonl",
    "a/*.json*",
    "a/**",
    "a/",
    "a/?.jsonl",
    "a/[bc].jsonl",
    "a/[!b].jsonl",
    "a/[^b].jsonl",
    "a/[]x].jsonl",
    "a/[b",
    "a/b.jsonl",
    "a/.hidden.jsonl",
    "a/*",
    "missing/*.jsonl",
    "a/sub/*.parquet",
    "a/sub*",
    "a/sub/deeper/**.gz",
]


def test_pattern_syntax_is_beams() -> None:
    for pattern in [*PATTERNS, "x[", "[!]]", "\\[a]", "a**b*c?d", "(.+)", "x{1}"]:
        assert _pattern_regex(pattern) == FileSystem.translate_pattern(pattern), pattern


def test_local_matches_are_beams(tmp_path: Path) -> None:
    for name in [
        "a/b.jsonl",
        "a/c.jsonl",
        "a/].jsonl",
        "a/x.json",
        "a/.hidden.jsonl",
        "a/sub/d.parquet",
        "a/sub/deeper/e.jsonl.gz",
        "a/subway/f.jsonl",
        "top.jsonl",
    ]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
    for pattern in PATTERNS:
        absolute = os.path.join(str(tmp_path), pattern)
        (beam_result,) = FileSystems.match([absolute])
        expected = sorted(m.path for m in beam_result.metadata_list)
        assert sorted(match_local(absolute)) == expected, pattern
    assert match_local(os.path.join(str(tmp_path), "a/*.jsonl"))  # the comparison saw matches


def test_no_builtin_step_module_imports_beam() -> None:
    """Every built-in step module (``score``'s RunInference and ``audit``'s included) declares its
    step without importing Beam; the Beam classes wait in ``transforms/beam/``."""
    code = (
        "import importlib, sys\n"
        "from pipelines.registry import builtin_steps\n"
        "modules = sorted({target.split(':')[0] for target in builtin_steps().values()})\n"
        "for module in modules:\n"
        "    importlib.import_module(module)\n"
        "print(len(modules), 'apache_beam' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, beam_loaded = done.stdout.split()
    assert int(count) >= 17 and beam_loaded == "False", done.stdout


@pytest.mark.parametrize("spec", SPECS)
def test_validation_imports_no_beam(spec: str) -> None:
    """Loading, planning and checking the spec (every step instantiated, its checks run, its
    input files resolved: what ``agentmill validate`` does) leaves ``apache_beam`` unimported."""
    code = (
        "import sys\n"
        "from pipelines.cli import main\n"
        f"assert main(['validate', {spec!r}]) == 0\n"
        "loaded = sorted(m for m in sys.modules if m == 'apache_beam' or m.startswith('apache_beam.'))\n"
        "print(len(loaded), loaded[:5])\n"
    )
    shared = REPO.parent / "shared"
    if spec != "pipelines/demo.yaml" and not shared.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{shared} is missing")
        pytest.skip(f"{spec} reads ../shared, which is absent")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout


def test_the_beam_side_keeps_its_old_names_in_the_contract_module() -> None:
    """Steps written before the split import ``RecordDoFn`` and ``SourceDoFn`` from
    ``transforms.base``; they still get the classes (imported on first use)."""
    import transforms.base as base
    from transforms.beam import records

    assert base.RecordDoFn is records.RecordDoFn and base.SourceDoFn is records.SourceDoFn
    with pytest.raises(AttributeError):
        _ = base.NoSuchThing


def test_a_step_applies_in_any_beam_pipeline() -> None:
    """``step.ptransform()`` applies a step outside agentmill's runner, under its id."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from schemas import Lineage, Message, Role, Sample
    from transforms.base import MAIN, StepContext
    from transforms.dedup import Dedup

    def sample(sid: str) -> Sample:
        messages = [Message(role=Role.USER, content="Hi there"), Message(role=Role.ASSISTANT, content="Hello!")]
        return Sample(id=sid, kind="general", messages=messages, lineage=Lineage(source="t", source_id=sid))

    one, two = sample("a"), sample("b")
    step = Dedup({}, StepContext(step_id="unique"))
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        result = pipeline | beam.Create([one, two]).with_output_types(Sample) | step.ptransform()
        assert_that(result[MAIN] | beam.Map(lambda s: s.id), equal_to(["a"]))
    assert step.ptransform().label == "unique"
