"""Disk-backed merges, barriers and sorted groups: a run's memory stays flat as its data grows.

Beam runners that execute on one machine (the in-process FnApiRunner, its multi-processing and
``PortableRunner --job_endpoint=embed`` forms) keep in memory every PCollection that crosses a
stage boundary: the inputs of a multi-input Flatten, the input of a GroupByKey, and the main
input of a ParDo whose side input is computed from the same upstream stage ("count, then
select"). On 1M trajectories that is the whole data set, several times over.

These transforms move such crossings to files under a spill directory (any Beam filesystem):
each bundle appends its records to a run file as it goes, and only the run files' names cross
the stage boundary. With ``directory=None`` (Dataflow, Flink and Spark shuffle to disk
themselves) the runs travel *inline* instead: a run is one ``bytes`` element of about
``RUN_BYTES``, so a runner that shuffles encodes, moves and decodes one element per few MiB of
records instead of one per record (issue 16), with the same results:

- :class:`Merge`: a Flatten of one or more PCollections whose result is read back from disk.
  It is also the barrier of count-then-select steps: the counting runs on the inputs, the
  selection on what ``Merge`` gives back, so the runner never holds the records.
- :class:`SortedGroups`: ``(partition, (key, payload))`` -> ``(partition, iterable of (key,
  payload) sorted)``, an external merge sort: runs of at most ``buffer_bytes`` are sorted in
  memory, written, and merged lazily when read. Equal keys are ordered by payload, so the result
  does not depend on arrival order, runner or worker count.

Runs are written with length-prefixed frames (never pickle). Run files belong to the run: each
is deleted once read (these runners do not retry bundles; a retry would fail on the missing
file, never silently), and the runner deletes the spill directory before it publishes. Inline
runs are plain values, so a runner that retries a bundle reads them again.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
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
#: Bytes of frames joined into one write of a run, and read at once from a run file: one call
#: per chunk instead of two per pair (a merge holds one read chunk per run it reads).
WRITE_CHUNK = READ_CHUNK = 256 * 2**10

_FRAME = struct.Struct(">II")  # key length, payload length
#: Python's memory for a buffered pair beyond its bytes: a 2-tuple (56), two bytes objects (2 x 33)
#: and the list slot (8), so ``buffer_bytes`` bounds real memory, also for small pairs.
_PAIR_OVERHEAD = 130
Pair = tuple[bytes, bytes]
#: A run: the path of a run file, or (without a spill directory) the run's frames inline.
Run = str | bytes


def write_frames(handle: Any, pairs: Iterable[Pair]) -> None:
    """Append ``(key, payload)`` pairs to an open binary file (in writes of about
    :data:`WRITE_CHUNK` bytes)."""
    writer = _FrameChunks(handle.write)
    writer.add(pairs)
    writer.flush()


class _FrameChunks:
    """Frames ``(key, payload)`` pairs and hands them to ``write`` joined in chunks of about
    :data:`WRITE_CHUNK` bytes: a file gets one write call per chunk, not two per pair (with
    pairs of a few KiB, a buffered file copies and flushes each one on its own)."""

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self.write = write
        self.pending: list[bytes] = []
        self.size = 0

    def add(self, pairs: Iterable[Pair]) -> None:
        pack, append, size = _FRAME.pack, self.pending.append, self.size
        for key, payload in pairs:
            append(pack(len(key), len(payload)) + key)
            append(payload)
            size += _FRAME.size + len(key) + len(payload)
            if size >= WRITE_CHUNK:
                self.flush()  # empties ``pending`` in place
                size = 0
        self.size = size

    def flush(self) -> None:
        if self.pending:
            self.write(b"".join(self.pending))
            self.pending.clear()
            self.size = 0


def read_frames(run: Run) -> Iterator[Pair]:
    """The ``(key, payload)`` pairs of one run (a file's path, or an inline run), in order."""
    if isinstance(run, bytes):
        offset, _ = yield from _cut_frames(run, 0)
        if offset != len(run):
            raise ValueError("inline run is truncated")
        return
    path = run
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        block, offset = b"", 0  # frames are cut from blocks of about READ_CHUNK bytes
        while True:
            offset, needed = yield from _cut_frames(block, offset)
            more = handle.read(max(READ_CHUNK, needed - len(block)))
            if not more:
                if offset != len(block):
                    raise OSError(f"spill file {path} is truncated")
                return
            block, offset = block[offset:] + more, 0


def _cut_frames(block: bytes, offset: int) -> Generator[Pair, None, tuple[int, int]]:
    """Yield the whole frames of ``block`` from ``offset`` on; return where the first frame that
    ``block`` does not hold whole starts (``len(block)`` when none) and the length of ``block``
    it needs (its header's end when even that is cut)."""
    size, unpack_from, end = _FRAME.size, _FRAME.unpack_from, len(block)
    while end - offset >= size:
        key_size, payload_size = unpack_from(block, offset)
        key_end = offset + size + key_size
        frame_end = key_end + payload_size
        if frame_end > end:
            return offset, frame_end
        yield block[key_end - key_size : key_end], block[key_end:frame_end]
        offset = frame_end
    return offset, offset + size


def _discard(runs: Iterable[Run]) -> None:
    """Delete the run files among ``runs`` (read once: free the disk as the run goes)."""
    paths = [run for run in runs if isinstance(run, str)]
    if paths:
        FileSystems.delete(paths)


class _RunWriter:
    """Appends frames to a new run: a file under ``directory``, or bytes in memory when
    ``directory`` is ``None``. :meth:`close` gives the :data:`Run`."""

    def __init__(self, directory: str | None, label: str) -> None:
        if directory is None:
            self.path, self.handle, self.parts = None, None, []
            self.frames = _FrameChunks(self.parts.append)
        else:
            self.path, self.handle = _new_run(directory, label)
            self.frames = _FrameChunks(self.handle.write)

    def write(self, pairs: Iterable[Pair]) -> None:
        self.frames.add(pairs)

    def close(self) -> Run:
        self.frames.flush()
        if self.path is None:
            return b"".join(self.parts)
        self.handle.close()
        return self.path


def _new_run(directory: str, label: str) -> tuple[str, Any]:
    path = FileSystems.join(directory, f"{label}-{uuid.uuid4().hex}.run")
    return path, FileSystems.create(path, mime_type="application/octet-stream", compression_type="uncompressed")


def _label(value: Any) -> str:
    """A file-name-safe label of a partition key."""
    return hashlib.sha256(repr(value).encode("utf-8")).hexdigest()[:12]


# --- Merge ----------------------------------------------------------------------------------------


class _SpillRecords(beam.DoFn):
    """Appends a bundle's records to runs of about ``run_bytes`` payload bytes each (files under
    ``directory``, or inline runs without one); emits each run once it is full or the bundle
    ends."""

    def __init__(self, directory: str | None, coder: beam.coders.Coder, run_bytes: int = RUN_BYTES) -> None:
        self.directory = directory
        self.coder = coder
        self.run_bytes = run_bytes

    def start_bundle(self) -> None:
        self.run: _RunWriter | None = None
        self.written = 0

    def process(self, record: Any) -> Iterator[Run]:
        if self.run is None:
            self.run = _RunWriter(self.directory, "records")
            self.written = 0
        payload = self.coder.encode(record)
        self.run.write([(b"", payload)])
        self.written += len(payload)
        if self.written >= self.run_bytes:
            yield self._close()

    def _close(self) -> Run:
        assert self.run is not None
        run, self.run = self.run.close(), None
        return run

    def finish_bundle(self) -> Iterator[Any]:
        if self.run is not None:
            yield GlobalWindows.windowed_value(self._close())


class _RestoreRecords(beam.DoFn):
    def __init__(self, coder: beam.coders.Coder) -> None:
        self.coder = coder

    def process(self, run: Run) -> Iterator[Any]:
        decode = self.coder.decode
        for _, payload in read_frames(run):
            yield decode(payload)
        _discard([run])


class Merge(beam.PTransform):
    """A barrier: the records of ``inputs`` come back in a new stage, in runs (files under
    ``directory``, or inline runs of about ``RUN_BYTES`` without one), so what crosses the
    stage boundary is one element per run, encoded once, never one per record.

    ``inputs`` is a PCollection or a tuple of PCollections of one element type. Record order is
    not kept (Beam never promises it). With ``barrier=False`` and no ``directory`` it is a plain
    Flatten: a merge of inputs that need not wait for anything (a runner that shuffles fuses a
    Flatten; nothing crosses). With a ``directory`` the records always go through files: the
    runners that spill hold a Flatten's inputs in memory.
    """

    def __init__(
        self, directory: str | None, element_type: Any = None, label: str | None = None, barrier: bool = True
    ) -> None:
        super().__init__(label)
        self.directory = directory
        self.element_type = element_type
        self.barrier = barrier

    def expand(self, inputs: Any) -> beam.PCollection:
        pcolls = (inputs,) if isinstance(inputs, beam.PCollection) else tuple(inputs)
        element_type = self.element_type or pcolls[0].element_type
        if self.directory is None and not self.barrier:
            merged = pcolls[0] if len(pcolls) == 1 else pcolls | "Flatten" >> beam.Flatten()
            merged.element_type = element_type
            return merged
        coder = beam.coders.registry.get_coder(element_type)
        run_type = bytes if self.directory is None else str
        runs = [
            pcoll | f"Spill{i}" >> beam.ParDo(_SpillRecords(self.directory, coder)).with_output_types(run_type)
            for i, pcoll in enumerate(pcolls)
        ]
        restored = (
            tuple(runs)
            | "Paths" >> beam.Flatten()
            | "Barrier" >> beam.Reshuffle()
            | "Restore" >> beam.ParDo(_RestoreRecords(coder))
        )
        restored.element_type = element_type
        return restored


# --- SortedGroups ---------------------------------------------------------------------------------


class MergedRuns:
    """The pairs of several sorted runs, merged lazily into one sorted stream.

    At most ``fan_in`` run files are open at once: with more, groups of ``fan_in`` are first
    merged into longer runs beside them (a multi-pass merge). Inline runs are already in memory
    and are merged in one pass."""

    def __init__(self, runs: Iterable[Run], fan_in: int = MAX_FAN_IN) -> None:
        self.runs = sorted(runs)
        self.fan_in = max(2, fan_in)

    def __iter__(self) -> Iterator[Pair]:
        runs = self.runs
        while len(runs) > self.fan_in and isinstance(runs[0], str):
            runs = [_merge_into_run(runs[i : i + self.fan_in]) for i in range(0, len(runs), self.fan_in)]  # type: ignore[arg-type]
        yield from heapq.merge(*(read_frames(run) for run in runs))
        _discard(runs)


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


def _run_bytes(directory: str | None, buffer_bytes: int) -> int:
    """What a sorter buffers before it writes a run: ``buffer_bytes``, and at most ``RUN_BYTES``
    for inline runs (they are elements of the pipeline)."""
    return buffer_bytes if directory is not None else min(buffer_bytes, RUN_BYTES)


class _SortRuns(beam.DoFn):
    """Buffers ``(partition, (key, payload))`` per partition; every ``buffer_bytes`` (and when the
    bundle ends) writes each partition's buffer, sorted, as a run and emits ``(partition, run)``."""

    def __init__(self, directory: str | None, buffer_bytes: int) -> None:
        self.directory = directory
        self.buffer_bytes = buffer_bytes

    def start_bundle(self) -> None:
        self.buffers: dict[Any, list[Pair]] = {}
        self.size = 0

    def process(self, element: tuple[Any, Pair]) -> Iterator[tuple[Any, Run]]:
        partition, pair = element
        self.buffers.setdefault(partition, []).append(pair)
        self.size += len(pair[0]) + len(pair[1]) + _PAIR_OVERHEAD
        if self.size >= self.buffer_bytes:
            yield from self._flush()

    def _flush(self) -> Iterator[Any]:
        buffers, self.buffers, self.size = self.buffers, {}, 0
        for partition, pairs in buffers.items():
            pairs.sort()
            run = _RunWriter(self.directory, _label(partition))
            run.write(pairs)
            yield self._emit(partition, run.close(), len(pairs))

    def _emit(self, partition: Any, run: Run, pairs: int) -> Any:
        return partition, run

    def finish_bundle(self) -> Iterator[Any]:
        for element in self._flush():
            yield GlobalWindows.windowed_value(element)


class _SortPairRuns(_SortRuns):
    """``(key, payload)`` pairs -> ``(run, pairs in it)`` of runs, each sorted."""

    def process(self, element: Pair) -> Iterator[tuple[Run, int]]:  # type: ignore[override]
        yield from super().process((0, element))

    def _emit(self, partition: Any, run: Run, pairs: int) -> tuple[Run, int]:
        return run, pairs


class _Repartition(beam.DoFn):
    """``(sorted run, pairs)`` -> ``(partition, run)`` once the partition count is known (a side
    input): with one partition the run passes as it is (nothing is read); with more, its pairs
    are split into one run per partition they fall in (``partition_of(key, count)``), each still
    sorted, as a subsequence of a sorted run."""

    def __init__(self, directory: str | None, partition_of: Callable[[bytes, int], int]) -> None:
        self.directory = directory
        self.partition_of = partition_of

    def process(self, sized_run: tuple[Run, int], count: int) -> Iterator[tuple[int, Run]]:
        run = sized_run[0]
        if count == 1:
            yield 0, run
            return
        runs: dict[int, _RunWriter] = {}
        for key, payload in read_frames(run):
            partition = self.partition_of(key, count)
            if partition not in runs:
                runs[partition] = _RunWriter(self.directory, _label(partition))
            runs[partition].write([(key, payload)])
        for partition, writer in sorted(runs.items()):
            yield partition, writer.close()
        _discard([run])


class SortedPartitions(beam.PTransform):
    """``(key: bytes, payload: bytes)`` pairs -> ``(groups, count)``: ``count`` holds
    ``partitions(number of pairs)`` (nothing when there are no pairs: read it with
    :meth:`count_view`, which gives ``partitions(0)`` then, without a stage of its own), and
    ``groups`` is ``KV[partition, Iterable[(key, payload)]]``, the pairs of each of the
    ``count`` partitions sorted (by key, then payload), the partition of a pair being
    ``partition_of(key, count)``.

    Each bundle's pairs are sorted into runs *before* the count is known (a sort does not need
    it), and the runs count their pairs, so the pairs cross the barrier that waits for the count
    once, already sorted, a run at a time (files under ``directory``, or inline runs without
    one), and nothing is done per pair to count them; once the count is known, runs are split by
    partition (a pass over them only when ``count > 1``) and merged lazily per partition. The
    result equals assigning partitions first and then sorting each partition."""

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
        buffer_bytes = _run_bytes(self.directory, self.buffer_bytes)
        runs = pairs | "SortRuns" >> beam.ParDo(_SortPairRuns(self.directory, buffer_bytes))
        count = (
            runs
            | "RunSizes" >> beam.Map(lambda run: run[1])
            | "Count" >> beam.CombineGlobally(sum).without_defaults()
            | "Partitions" >> beam.Map(self.partitions)
        )
        groups = (
            runs
            | "Repartition" >> beam.ParDo(_Repartition(self.directory, self.partition_of), self.count_view(count))
            | "GroupRuns" >> beam.GroupByKey()
            | "MergeRuns" >> beam.MapTuple(lambda partition, runs: (partition, MergedRuns(runs)))
        )
        return groups, count

    def count_view(self, count: beam.PCollection) -> beam.pvalue.AsSingleton:
        """``count`` as a singleton side input: ``partitions(0)`` when there were no pairs."""
        return beam.pvalue.AsSingleton(count, default_value=self.partitions(0))


class SortedGroups(beam.PTransform):
    """``KV[partition, (key: bytes, payload: bytes)]`` (one PCollection or a tuple) ->
    ``KV[partition, Iterable[(key, payload)]]`` with each partition's pairs sorted (by key, then
    payload).

    Each bundle sorts its pairs into runs (at most ``buffer_bytes`` in memory per worker), which
    are grouped by partition and merged lazily when read: an external sort with a ``directory``
    (one frame per run in memory when reading); without one the runs travel inline, so the
    grouping shuffles one element per run, not one per pair.
    """

    def __init__(
        self, directory: str | None, buffer_bytes: int = DEFAULT_BUFFER_BYTES, label: str | None = None
    ) -> None:
        super().__init__(label)
        self.directory = directory
        self.buffer_bytes = buffer_bytes

    def expand(self, inputs: Any) -> beam.PCollection:
        pcolls = (inputs,) if isinstance(inputs, beam.PCollection) else tuple(inputs)
        buffer_bytes = _run_bytes(self.directory, self.buffer_bytes)
        runs = [
            pcoll | f"SortRuns{i}" >> beam.ParDo(_SortRuns(self.directory, buffer_bytes))
            for i, pcoll in enumerate(pcolls)
        ]
        return (
            tuple(runs)
            | "Runs" >> beam.Flatten()
            | "GroupRuns" >> beam.GroupByKey()
            | "MergeRuns" >> beam.MapTuple(lambda partition, runs: (partition, MergedRuns(runs)))
        )


__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "RUN_BYTES",
    "SPILL_FOLDER",
    "Merge",
    "MergedRuns",
    "Run",
    "SortedGroups",
    "SortedPartitions",
    "read_frames",
    "write_frames",
]
