"""A global combine as a singleton side input without Beam's default-injection stage."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms.beam.singletons import combined_singleton


def _check(values: list[int], lean: bool) -> None:
    """A consumer reads ``[count, count**2]`` of ``values``, by :func:`combined_singleton` or by
    Beam's defaulting ``CombineGlobally`` (``assert_that`` fails the run otherwise)."""
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        numbers = pipeline | beam.Create(values).with_output_types(int)
        if lean:
            view = combined_singleton(numbers, beam.combiners.CountCombineFn(), "Count", then=lambda n: [n, n * n])
        else:
            view = beam.pvalue.AsSingleton(
                numbers | beam.CombineGlobally(beam.combiners.CountCombineFn()) | beam.Map(lambda n: [n, n * n])
            )
        read = pipeline | "One" >> beam.Create([0]) | beam.Map(lambda _, seen: seen, view)
        assert_that(read, equal_to([[len(values), len(values) ** 2]]))


@pytest.mark.parametrize("values", [[], [3], [1, 2, 3, 4]])
def test_the_singleton_is_beams_for_empty_and_full_inputs(values):
    _check(values, lean=False)  # Beam's own answer, the reference
    _check(values, lean=True)


def test_no_default_injection_branch_is_built():
    pipeline = beam.Pipeline(runner=FnApiRunner())
    numbers = pipeline | beam.Create([1]).with_output_types(int)
    combined_singleton(numbers, beam.combiners.ToListCombineFn(), "List")
    names = [t.unique_name for t in pipeline.to_runner_api().components.transforms.values()]
    assert not [name for name in names if "DoOnce" in name or "InjectDefault" in name]


def test_the_demo_keeps_one_default_injection_the_audits():
    """Of the demo's global combines, only the audit's check (read as a main input: its report
    is written even for no samples) keeps Beam's default branch."""
    from pipelines.build import build
    from pipelines.graph import load_plan

    pipeline = beam.Pipeline(runner=FnApiRunner())
    build(pipeline, load_plan("pipelines/demo.yaml"), "/nonexistent/work", None)
    names = [t.unique_name for t in pipeline.to_runner_api().components.transforms.values()]
    assert sorted({n.rsplit("/DoOnce", 1)[0] for n in names if n.endswith("/DoOnce")}) == ["Run/Audit/Check/Combine"]
