"""Disk-backed merges and sorts (transforms/spill.py), and spilling in whole runs."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from pipelines.run import spills
from tests.conftest import REPO
from tests.helpers import rejected, shard_hashes
from transforms.spill import Merge, MergedRuns, SortedGroups, SortedPartitions, read_frames, write_frames


def _pipeline() -> beam.Pipeline:
    return beam.Pipeline(runner=FnApiRunner())


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


@pytest.mark.parametrize("spill", [True, False], ids=["spilled", "in_memory"])
def test_merge_returns_every_record_of_every_input(tmp_path, spill):
    directory = str(tmp_path / "spill") if spill else None
    with _pipeline() as p:
        a = p | "A" >> beam.Create([("a", i) for i in range(500)])
        b = p | "B" >> beam.Create([("b", i) for i in range(300)])
        merged = (a, b) | Merge(directory, beam.typehints.Tuple[str, int])
        assert_that(merged, equal_to([("a", i) for i in range(500)] + [("b", i) for i in range(300)]))
    assert _files(tmp_path / "spill") == []  # run files are deleted once read


def _pairs(n: int, partitions: int) -> list[tuple[int, tuple[bytes, bytes]]]:
    rng = random.Random(7)
    return [(rng.randrange(partitions), (f"k{rng.randrange(n // 3):06d}".encode(), f"p{i}".encode())) for i in range(n)]


def test_a_bundle_spills_into_runs_of_about_equal_size_so_workers_share_the_next_stage(tmp_path):
    from transforms.spill import _RestoreRecords, _SpillRecords

    coder = beam.coders.StrUtf8Coder()
    spill = _SpillRecords(str(tmp_path), coder, run_bytes=1000)
    records = [f"record {i:04d} " + "x" * 90 for i in range(95)]  # 100 bytes each
    spill.start_bundle()
    paths = [p for r in records for p in spill.process(r)]
    paths += [windowed.value for windowed in spill.finish_bundle()]
    sizes = [len(list(read_frames(p))) for p in paths]
    assert sizes == [10] * 9 + [5]  # full runs of run_bytes, then the bundle's rest
    restore = _RestoreRecords(coder)
    assert [r for p in paths for r in restore.process(p)] == records


def test_without_a_spill_directory_runs_travel_inline_as_one_element_each():
    from transforms.spill import _RestoreRecords, _SpillRecords

    coder = beam.coders.StrUtf8Coder()
    spill = _SpillRecords(None, coder, run_bytes=1000)
    records = [f"record {i:04d} " + "x" * 90 for i in range(95)]  # 100 bytes each
    spill.start_bundle()
    runs = [r for record in records for r in spill.process(record)]
    runs += [windowed.value for windowed in spill.finish_bundle()]
    assert all(isinstance(run, bytes) for run in runs)
    assert [len(list(read_frames(run))) for run in runs] == [10] * 9 + [5]
    assert [r for run in runs for r in _RestoreRecords(coder).process(run)] == records


def _producers(pipeline: beam.Pipeline) -> dict[str, beam.pipeline.AppliedPTransform]:
    """Full label -> applied transform, for every transform in ``pipeline``."""
    found: dict[str, beam.pipeline.AppliedPTransform] = {}

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node: beam.pipeline.AppliedPTransform) -> None:
            found[node.full_label] = node

        def visit_transform(self, node: beam.pipeline.AppliedPTransform) -> None:
            found[node.full_label] = node

    pipeline.visit(Visitor())
    return found


def test_a_barrier_without_a_spill_directory_shuffles_runs_not_records():
    """On Dataflow, Flink and Spark (no spill directory) the barrier of count-then-select
    steps moves inline runs across its Reshuffle; a merge that is no barrier is a Flatten."""
    p = _pipeline()
    a = p | "A" >> beam.Create([("a", i) for i in range(5)])
    b = p | "B" >> beam.Create([("b", i) for i in range(3)])
    (a, b) | "Barrier" >> Merge(None, beam.typehints.Tuple[str, int])
    (a, b) | "Plain" >> Merge(None, beam.typehints.Tuple[str, int], barrier=False)
    transforms = _producers(p)
    shuffled = transforms["Barrier/Barrier"].inputs[0]
    assert shuffled.element_type is bytes
    assert transforms["Barrier/Paths"].inputs[0].producer.full_label == "Barrier/Spill0"
    assert not any(label.startswith("Plain/") and "Reshuffle" in label for label in transforms)
    assert "Plain/Flatten" in transforms


def test_inline_runs_merge_in_one_pass_and_a_truncated_one_is_an_error():
    rng = random.Random(5)
    pairs = [(f"{rng.randrange(10_000):05d}".encode(), f"{i}".encode()) for i in range(2_000)]
    runs = []
    for r in range(23):
        buffer = io.BytesIO()
        write_frames(buffer, sorted(pairs[r::23]))
        runs.append(buffer.getvalue())
    assert list(MergedRuns(runs, fan_in=4)) == sorted(pairs)
    with pytest.raises(ValueError, match="truncated"):
        list(read_frames(runs[0][:-1]))
    with pytest.raises(ValueError, match="truncated"):
        list(read_frames(runs[0] + b"\x00"))


def test_sorted_groups_spilled_in_many_runs_equal_the_in_memory_sort(tmp_path):
    pairs = _pairs(3000, 4)
    expected: dict[int, list] = {}
    for partition, pair in pairs:
        expected.setdefault(partition, []).append(pair)
    expected = {k: sorted(v) for k, v in expected.items()}
    results = {}
    for name, directory, buffer in (("memory", None, 0), ("disk", str(tmp_path / "spill"), 2_000)):
        with _pipeline() as p:
            grouped = (
                p
                | f"Create {name}" >> beam.Create(pairs)
                | f"Sort {name}" >> SortedGroups(directory, buffer_bytes=max(buffer, 1))
                | f"List {name}" >> beam.MapTuple(lambda k, v: (k, [list(x) for x in v]))
            )
            assert_that(grouped, equal_to([(k, [list(x) for x in v]) for k, v in expected.items()]))
        results[name] = True
    assert results == {"memory": True, "disk": True}
    assert _files(tmp_path / "spill") == []


def _last_byte_partition(key: bytes, count: int) -> int:
    return key[-1] % count


@pytest.mark.parametrize("partitions", [1, 3])
def test_sorted_partitions_spilled_in_many_runs_equal_the_in_memory_sort(tmp_path, partitions):
    """Runs sorted before the count is known, then split by partition, give what assigning
    partitions first and sorting in memory gives (one partition: no split pass)."""
    pairs = [pair for _, pair in _pairs(3000, 1)]
    expected: dict[int, list] = {}
    for pair in pairs:
        expected.setdefault(_last_byte_partition(pair[0], partitions), []).append(pair)
    expected_rows = [(k, [list(x) for x in sorted(v)]) for k, v in expected.items()]
    for name, directory in (("memory", None), ("disk", str(tmp_path / "spill"))):
        with _pipeline() as p:
            groups, count = (
                p
                | f"Create {name}" >> beam.Create(pairs)
                | f"Sort {name}"
                >> SortedPartitions(directory, lambda n: partitions, _last_byte_partition, buffer_bytes=2_000)
            )
            listed = groups | f"List {name}" >> beam.MapTuple(lambda k, v: (k, [list(x) for x in v]))
            assert_that(listed, equal_to(expected_rows), label=f"groups {name}")
            assert_that(count, equal_to([partitions]), label=f"count {name}")
    assert _files(tmp_path / "spill") == []


def test_many_runs_are_merged_in_several_passes_with_few_open_files(tmp_path):
    runs = []
    rng = random.Random(3)
    pairs = [(f"{rng.randrange(10_000):05d}".encode(), f"{i}".encode()) for i in range(2_000)]
    for r in range(23):  # 23 sorted runs, merged 4 at a time
        path = tmp_path / f"run{r}.run"
        with open(path, "wb") as handle:
            write_frames(handle, sorted(pairs[r::23]))
        runs.append(str(path))
    assert list(MergedRuns(runs, fan_in=4)) == sorted(pairs)
    assert _files(tmp_path) == []  # inputs and intermediate runs are deleted once read


def test_sorted_groups_takes_several_inputs(tmp_path):
    with _pipeline() as p:
        a = p | "A" >> beam.Create([("x", (b"2", b"")), ("y", (b"1", b""))])
        b = p | "B" >> beam.Create([("x", (b"1", b"")), ("x", (b"3", b""))])
        out = (a, b) | SortedGroups(str(tmp_path / "spill")) | beam.MapTuple(lambda k, v: (k, [key for key, _ in v]))
        assert_that(out, equal_to([("x", [b"1", b"2", b"3"]), ("y", [b"1"])]))


def test_frames_round_trip_and_a_truncated_file_is_an_error(tmp_path):
    path = tmp_path / "run.run"
    pairs = [(b"", b""), (b"key", b"\x00payload\xff"), (b"k" * 70_000, b"v")]
    with open(path, "wb") as handle:
        write_frames(handle, pairs)
    assert list(read_frames(str(path))) == pairs
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(OSError, match="truncated"):
        list(read_frames(str(path)))


@pytest.mark.parametrize(
    ("args", "runner", "expected"),
    [
        ([], FnApiRunner(), True),
        ([], "DirectRunner", True),
        (["--job_endpoint=embed"], "PortableRunner", True),
        (["--job_endpoint=localhost:8099"], "PortableRunner", False),
        ([], "DataflowRunner", False),
        ([], "FlinkRunner", False),
        ([], "SparkRunner", False),
    ],
)
def test_spilling_is_on_for_the_runners_that_hold_data_in_memory(args, runner, expected):
    assert spills(PipelineOptions(args), runner) is expected


def test_a_spilled_run_equals_an_unspilled_one_and_leaves_no_spill_files(tmp_path):
    from pipelines.run import run_spec

    spec = REPO / "pipelines" / "demo.yaml"
    spilled = run_spec(str(spec), str(tmp_path / "spilled"), [], spill=True)
    plain = run_spec(str(spec), str(tmp_path / "plain"), [], spill=False)
    assert spilled.manifest.run["spilled"] and not plain.manifest.run["spilled"]
    assert shard_hashes(tmp_path / "spilled") == shard_hashes(tmp_path / "plain")
    assert spilled.manifest.steps == plain.manifest.steps
    for step in spilled.manifest.steps:
        assert rejected(tmp_path / "spilled", step) == rejected(tmp_path / "plain", step)
    assert not (tmp_path / "spilled" / "_spill").exists()
    step_seconds = spilled.manifest.run["step_seconds"]
    assert set(step_seconds) <= {*spilled.manifest.steps, "run", "publish_audit"}
    assert step_seconds and all(s >= 0 for s in step_seconds.values())
    json.dumps(spilled.manifest.run)


def test_frames_cross_write_and_read_chunks_and_any_cut_is_an_error(tmp_path):
    from transforms.spill import READ_CHUNK, _RunWriter

    rng = random.Random(11)
    sizes = [0, 1, 7, 3_000, READ_CHUNK - 9, READ_CHUNK, READ_CHUNK + 1, 3 * READ_CHUNK + 5]
    pairs = [(rng.randbytes(rng.choice(sizes[:4])), rng.randbytes(rng.choice(sizes))) for _ in range(60)]
    path = tmp_path / "run.run"
    with open(path, "wb") as handle:
        write_frames(handle, pairs)
    assert list(read_frames(str(path))) == pairs
    for directory in (str(tmp_path / "runs"), None):  # a run file, and an inline run
        (tmp_path / "runs").mkdir(exist_ok=True)
        writer = _RunWriter(directory, "x")
        for i in range(0, len(pairs), 7):
            writer.write(pairs[i : i + 7])
        run = writer.close()
        assert list(read_frames(run)) == pairs
    data = path.read_bytes()
    for cut in (1, 5, 8, 9, READ_CHUNK, READ_CHUNK + 3, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(OSError, match="truncated"):
            list(read_frames(str(path)))
