"""Disk-backed merges, barriers and sorted groups: a run's memory stays flat as its data grows.

Beam runners that execute on one machine (the in-process FnApiRunner, its multi-processing and
``PortableRunner --job_endpoint=embed`` forms) keep in memory every PCollection that crosses a
stage boundary: the inputs of a multi-input Flatten, the input of a GroupByKey, and the main
input of a ParDo whose side input is computed from the same upstream stage ("count, then
select"). On 1M trajectories that is the whole data set, several times over.

These transforms move such crossings to files under a spill directory (any Beam filesystem):
each bundle appends its records to a run file as it goes, and only the run files' names cross
the stage boundary. With ``directory=None`` (Dataflow, Flink and Spark shuffle to disk
themselves) they fall back to the plain Beam transforms, with the same results:

- :class:`Merge`: a Flatten of one or more PCollections whose result is read back from disk.
  It is also the barrier of count-then-select steps: the counting runs on the inputs, the
  selection on what ``Merge`` gives back, so the runner never holds the records.
- :class:`SortedGroups`: ``(partition, (key, payload))`` -> ``(partition, iterable of (key,
  payload) sorted)``, an external merge sort: runs of at most ``buffer_bytes`` are sorted in
  memory, written, and merged lazily when read. Equal keys are ordered by payload, so the result
  does not depend on arrival order, runner or worker count.

Run files are written with length-prefixed frames (never pickle) and belong to the run: each is
deleted once read (these runners do not retry bundles; a retry would fail on the missing file,
never silently), and the runner deletes the spill directory before it publishes.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

#: Folder under a run's working directory that holds its spill files.
SPILL_FOLDER = "_spill"
#: Bytes of keys and payloads a sorter holds before it writes a sorted run.
DEFAULT_BUFFER_BYTES = 64 * 2**20
#: Run files a merge reads at once (each holds an open file and its read buffer).
MAX_FAN_IN = 128
#: Payload bytes after which :class:`Merge` starts a new run file. The stage after the barrier
#: splits its input across workers file by file (the FnApiRunner deals them out in turn), so
#: runs of about equal size keep the workers equally busy: with one run per bundle, a 2-worker
#: run of the agent_flan recipe gave one worker 93 % of align's input (61 MB against 4 MB).
RUN_BYTES = 4 * 2**20

_FRAME = struct.Struct(">II")  # key length, payload length
#: Python's memory for a buffered pair beyond its bytes: a 2-tuple (56), two bytes objects (2 x 33)
#: and the list slot (8), so ``buffer_bytes`` bounds real memory, also for small pairs.
_PAIR_OVERHEAD = 130
Pair = tuple[bytes, bytes]


def write_frames(handle: Any, pairs: Iterable[Pair]) -> None:
    """Append ``(key, payload)`` pairs to an open binary file."""
    pack, write = _FRAME.pack, handle.write
    for key, payload in pairs:
        write(pack(len(key), len(payload)) + key)
        write(payload)


def read_frames(path: str) -> Iterator[Pair]:
    """The ``(key, payload)`` pairs of one run file, in file order."""
    size, unpack = _FRAME.size, _FRAME.unpack
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        read = handle.read
        while header := read(size):
            if len(header) != size:
                raise OSError(f"spill file {path} is truncated")
            key_size, payload_size = unpack(header)
            frame = read(key_size + payload_size)
            if len(frame) != key_size + payload_size:
                raise OSError(f"spill file {path} is truncated")
            yield frame[:key_size], frame[key_size:]


def _new_run(directory: str, label: str) -> tuple[str, Any]:
    path = FileSystems.join(directory, f"{label}-{uuid.uuid4().hex}.run")
    return path, FileSystems.create(path, mime_type="application/octet-stream", compression_type="uncompressed")


def _label(value: Any) -> str:
    """A file-name-safe label of a partition key."""
    return hashlib.sha256(repr(value).encode("utf-8")).hexdigest()[:12]


# --- Merge ----------------------------------------------------------------------------------------


class _SpillRecords(beam.DoFn):
    """Appends a bundle's records to run files of about ``run_bytes`` payload bytes each; emits
    each file's path once it is full or the bundle ends."""

    def __init__(self, directory: str, coder: beam.coders.Coder, run_bytes: int = RUN_BYTES) -> None:
        self.directory = directory
        self.coder = coder
        self.run_bytes = run_bytes

    def start_bundle(self) -> None:
        self.path: str = ""
        self.handle: Any = None
        self.written = 0

    def process(self, record: Any) -> Iterator[str]:
        if self.handle is None:
            self.path, self.handle = _new_run(self.directory, "records")
            self.written = 0
        payload = self.coder.encode(record)
        write_frames(self.handle, [(b"", payload)])
        self.written += len(payload)
        if self.written >= self.run_bytes:
            yield self._close()

    def _close(self) -> str:
        self.handle.close()
        self.handle = None
        return self.path

    def finish_bundle(self) -> Iterator[Any]:
        if self.handle is not None:
            yield GlobalWindows.windowed_value(self._close())


class _RestoreRecords(beam.DoFn):
    def __init__(self, coder: beam.coders.Coder) -> None:
        self.coder = coder

    def process(self, path: str) -> Iterator[Any]:
        decode = self.coder.decode
        for _, payload in read_frames(path):
            yield decode(payload)
        FileSystems.delete([path])  # read once: free the disk as the run goes


class Merge(beam.PTransform):
    """Flatten through files: the records of ``inputs`` come back in a new stage, read from disk.

    ``inputs`` is a PCollection or a tuple of PCollections of one element type. Record order is
    not kept (Beam never promises it). ``directory=None`` is a plain Flatten.
    """

    def __init__(self, directory: str | None, element_type: Any = None, label: str | None = None) -> None:
        super().__init__(label)
        self.directory = directory
        self.element_type = element_type

    def expand(self, inputs: Any) -> beam.PCollection:
        pcolls = (inputs,) if isinstance(inputs, beam.PCollection) else tuple(inputs)
        element_type = self.element_type or pcolls[0].element_type
        if self.directory is None:
            merged = pcolls[0] if len(pcolls) == 1 else pcolls | "Flatten" >> beam.Flatten()
            merged.element_type = element_type
            return merged
        coder = beam.coders.registry.get_coder(element_type)
        paths = [
            pcoll | f"Spill{i}" >> beam.ParDo(_SpillRecords(self.directory, coder)).with_output_types(str)
            for i, pcoll in enumerate(pcolls)
        ]
        restored = (
            tuple(paths)
            | "Paths" >> beam.Flatten()
            | "Barrier" >> beam.Reshuffle()
            | "Restore" >> beam.ParDo(_RestoreRecords(coder))
        )
        restored.element_type = element_type
        return restored


# --- SortedGroups ---------------------------------------------------------------------------------


class MergedRuns:
    """The pairs of several sorted run files, merged lazily into one sorted stream.

    At most ``fan_in`` files are open at once: with more runs, groups of ``fan_in`` are first
    merged into longer runs beside them (a multi-pass merge)."""

    def __init__(self, paths: Iterable[str], fan_in: int = MAX_FAN_IN) -> None:
        self.paths = sorted(paths)
        self.fan_in = max(2, fan_in)

    def __iter__(self) -> Iterator[Pair]:
        paths = self.paths
        while len(paths) > self.fan_in:
            paths = [_merge_into_run(paths[i : i + self.fan_in]) for i in range(0, len(paths), self.fan_in)]
        yield from heapq.merge(*(read_frames(path) for path in paths))
        FileSystems.delete(paths)  # read once: free the disk as the run goes


def _merge_into_run(paths: list[str]) -> str:
    """Merge sorted runs into one new run in the same folder; delete the inputs."""
    if len(paths) == 1:
        return paths[0]
    directory = FileSystems.split(paths[0])[0]
    path, handle = _new_run(directory, "merged")
    with handle:
        write_frames(handle, heapq.merge(*(read_frames(p) for p in paths)))
    FileSystems.delete(paths)
    return path


class _SortRuns(beam.DoFn):
    """Buffers ``(partition, (key, payload))`` per partition; every ``buffer_bytes`` (and when the
    bundle ends) writes each partition's buffer, sorted, as a run file and emits
    ``(partition, path)``."""

    def __init__(self, directory: str, buffer_bytes: int) -> None:
        self.directory = directory
        self.buffer_bytes = buffer_bytes

    def start_bundle(self) -> None:
        self.buffers: dict[Any, list[Pair]] = {}
        self.size = 0

    def process(self, element: tuple[Any, Pair]) -> Iterator[tuple[Any, str]]:
        partition, pair = element
        self.buffers.setdefault(partition, []).append(pair)
        self.size += len(pair[0]) + len(pair[1]) + _PAIR_OVERHEAD
        if self.size >= self.buffer_bytes:
            yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        buffers, self.buffers, self.size = self.buffers, {}, 0
        for partition, pairs in buffers.items():
            pairs.sort()
            path, handle = _new_run(self.directory, _label(partition))
            with handle:
                write_frames(handle, pairs)
            yield self._emit(partition, path, len(pairs))

    def _emit(self, partition: Any, path: str, pairs: int) -> Any:
        return partition, path

    def finish_bundle(self) -> Iterator[Any]:
        for element in self._flush():
            yield GlobalWindows.windowed_value(element)


class _SortPairRuns(_SortRuns):
    """``(key, payload)`` pairs -> ``(path, pairs in it)`` of run files, each sorted."""

    def process(self, element: Pair) -> Iterator[tuple[str, int]]:  # type: ignore[override]
        yield from super().process((0, element))

    def _emit(self, partition: Any, path: str, pairs: int) -> tuple[str, int]:
        return path, pairs


class _Repartition(beam.DoFn):
    """``(path of a sorted run, pairs)`` -> ``(partition, path)`` once the partition count is
    known (a side input): with one partition the run passes as it is (nothing is read); with
    more, its pairs are split into one run per partition they fall in
    (``partition_of(key, count)``), each still sorted, as a subsequence of a sorted run."""

    def __init__(self, directory: str, partition_of: Callable[[bytes, int], int]) -> None:
        self.directory = directory
        self.partition_of = partition_of

    def process(self, run: tuple[str, int], count: int) -> Iterator[tuple[int, str]]:
        path = run[0]
        if count == 1:
            yield 0, path
            return
        runs: dict[int, tuple[str, Any]] = {}
        for key, payload in read_frames(path):
            partition = self.partition_of(key, count)
            if partition not in runs:
                runs[partition] = _new_run(self.directory, _label(partition))
            write_frames(runs[partition][1], [(key, payload)])
        for partition, (new_path, handle) in sorted(runs.items()):
            handle.close()
            yield partition, new_path
        FileSystems.delete([path])


class SortedPartitions(beam.PTransform):
    """``(key: bytes, payload: bytes)`` pairs -> ``(groups, count)``: ``count`` is the singleton
    ``partitions(number of pairs)``, and ``groups`` is ``KV[partition, Iterable[(key,
    payload)]]``, the pairs of each of the ``count`` partitions sorted (by key, then payload),
    the partition of a pair being ``partition_of(key, count)``.

    With a ``directory``, each bundle's pairs are sorted into run files *before* the count is
    known (a sort does not need it), and the runs count their pairs, so the pairs cross the
    barrier that waits for the count on disk once, already sorted, and nothing is done per pair
    to count them; once the count is known, runs are split by partition (a pass over them only
    when ``count > 1``) and merged lazily per partition. The result equals assigning partitions
    first and then :class:`SortedGroups`, which is what runs without a ``directory`` (the
    runner materializes the pairs at the side input)."""

    def __init__(
        self,
        directory: str | None,
        partitions: Callable[[int], int],
        partition_of: Callable[[bytes, int], int],
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self.directory = directory
        self.partitions = partitions
        self.partition_of = partition_of
        self.buffer_bytes = buffer_bytes

    def expand(self, pairs: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        partition_of = self.partition_of
        if self.directory is None:
            count = pairs | "Count" >> beam.combiners.Count.Globally() | "Partitions" >> beam.Map(self.partitions)
            groups = (
                pairs
                | "Assign" >> beam.Map(lambda pair, n: (partition_of(pair[0], n), pair), beam.pvalue.AsSingleton(count))
                | "Sort" >> SortedGroups(None)
            )
            return groups, count
        runs = pairs | "SortRuns" >> beam.ParDo(_SortPairRuns(self.directory, self.buffer_bytes))
        count = (
            runs
            | "RunSizes" >> beam.Map(lambda run: run[1])
            | "Count" >> beam.CombineGlobally(sum)
            | "Partitions" >> beam.Map(self.partitions)
        )
        groups = (
            runs
            | "Repartition" >> beam.ParDo(_Repartition(self.directory, partition_of), beam.pvalue.AsSingleton(count))
            | "GroupRuns" >> beam.GroupByKey()
            | "MergeRuns" >> beam.MapTuple(lambda partition, paths: (partition, MergedRuns(paths)))
        )
        return groups, count


def _sorted_in_memory(element: tuple[Any, Iterable[Pair]]) -> tuple[Any, list[Pair]]:
    partition, pairs = element
    return partition, sorted(pairs)


class SortedGroups(beam.PTransform):
    """``KV[partition, (key: bytes, payload: bytes)]`` (one PCollection or a tuple) ->
    ``KV[partition, Iterable[(key, payload)]]`` with each partition's pairs sorted (by key, then
    payload).

    With a ``directory`` the sort is external (memory bounded by ``buffer_bytes`` per worker and
    one frame per run when reading); without, a GroupByKey sorted in memory.
    """

    def __init__(
        self, directory: str | None, buffer_bytes: int = DEFAULT_BUFFER_BYTES, label: str | None = None
    ) -> None:
        super().__init__(label)
        self.directory = directory
        self.buffer_bytes = buffer_bytes

    def expand(self, inputs: Any) -> beam.PCollection:
        pcolls = (inputs,) if isinstance(inputs, beam.PCollection) else tuple(inputs)
        if self.directory is None:
            merged = pcolls[0] if len(pcolls) == 1 else pcolls | "Flatten" >> beam.Flatten()
            return merged | "Group" >> beam.GroupByKey() | "Sort" >> beam.Map(_sorted_in_memory)
        runs = [
            pcoll | f"SortRuns{i}" >> beam.ParDo(_SortRuns(self.directory, self.buffer_bytes))
            for i, pcoll in enumerate(pcolls)
        ]
        return (
            tuple(runs)
            | "Runs" >> beam.Flatten()
            | "GroupRuns" >> beam.GroupByKey()
            | "MergeRuns" >> beam.MapTuple(lambda partition, paths: (partition, MergedRuns(paths)))
        )


__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "SPILL_FOLDER",
    "Merge",
    "MergedRuns",
    "SortedGroups",
    "SortedPartitions",
    "read_frames",
    "write_frames",
]
