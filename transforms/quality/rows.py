"""Per-sample rows of a whole-run audit state: compact in memory, on disk with a spill directory.

The checks that compare samples with each other (``near_duplicate``, ``repeated_response``)
keep one row per sample of the run: a fixed number of 64-bit keys and a label (the sample id).
:class:`Rows` keeps them as arrays (8 bytes per key, the label's UTF-8 bytes and a 4-byte
length) and, when given a ``directory``, writes them to a file there every ``flush_bytes``, so
the state Beam moves between bundles and stages (the combine's accumulator) is a list of file
names and one small buffer, and a run's memory does not grow with its size (issue 16: the
audit's per-sample keys were what still grew from 100k to 1M trajectories).

Guarantees:

- :meth:`column` and :meth:`labels` give the rows in one order (the files in the order they
  were written or merged, then the buffer), so the ``i``-th key and the ``i``-th label belong
  to the same row; :meth:`merge` concatenates (associative), so a check's result does not
  depend on how the samples were split into bundles when the check itself is order-free;
- reading holds one file at a time besides the column being built (``8 * rows`` bytes);
- files are written once and deleted by :meth:`discard` (the run also deletes its spill
  directory before publishing); without a directory nothing touches the disk.
"""

from __future__ import annotations

import os
import struct
import uuid
from array import array
from collections.abc import Iterator, Sequence

import numpy as np

#: Bytes of keys and labels a state buffers before it writes them to a file.
FLUSH_BYTES = 4 * 2**20
_HEADER = struct.Struct("<QQQ")  # rows, keys per row, label bytes


class Rows:
    """Rows of ``width`` unsigned 64-bit keys and a string label (see the module docstring)."""

    def __init__(self, width: int, directory: str | None = None, flush_bytes: int | None = None) -> None:
        self.width = width
        self.directory = directory
        self.flush_bytes = FLUSH_BYTES if flush_bytes is None else flush_bytes
        self.files: list[str] = []
        self.count = 0  # rows, in files and buffer
        self._reset()

    def _reset(self) -> None:
        self.keys = array("Q")
        self.lengths = array("I")
        self.text = bytearray()

    def __len__(self) -> int:
        return self.count

    def append(self, keys: Sequence[int], label: str) -> None:
        """Add one row: ``width`` keys (unsigned 64-bit) and its label."""
        if len(keys) != self.width:
            raise ValueError(f"a row has {self.width} keys, got {len(keys)}")
        encoded = label.encode("utf-8")
        self.keys.extend(keys)
        self.lengths.append(len(encoded))
        self.text += encoded
        self.count += 1
        self._maybe_flush()

    def merge(self, other: Rows) -> Rows:
        """This state with ``other``'s rows after its own; ``other`` is consumed."""
        if other.width != self.width:
            raise ValueError("rows of different widths do not merge")
        self.files += other.files
        self.keys.extend(other.keys)
        self.lengths.extend(other.lengths)
        self.text += other.text
        self.count += other.count
        self._maybe_flush()
        return self

    def _maybe_flush(self) -> None:
        if self.directory is None or 8 * len(self.keys) + 4 * len(self.lengths) + len(self.text) < self.flush_bytes:
            return
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"rows-{uuid.uuid4().hex}.bin")
        with open(path, "wb") as handle:
            handle.write(_HEADER.pack(len(self.lengths), self.width, len(self.text)))
            self.keys.tofile(handle)
            self.lengths.tofile(handle)
            handle.write(self.text)
        self.files.append(path)
        self._reset()

    def _parts(self, labels: bool) -> Iterator[tuple[np.ndarray, np.ndarray, bytes | bytearray]]:
        """``(keys as rows x width, label lengths, label bytes)`` of each file, then the buffer;
        the label bytes only when ``labels`` (a column's reader skips them)."""
        for path in self.files:
            with open(path, "rb") as handle:
                rows, width, text = _HEADER.unpack(handle.read(_HEADER.size))
                keys = np.fromfile(handle, dtype=np.uint64, count=rows * width).reshape(rows, width)
                lengths = np.fromfile(handle, dtype=np.uint32, count=rows)
                yield keys, lengths, handle.read(text) if labels else b""
        keys = np.frombuffer(self.keys, dtype=np.uint64).reshape(-1, self.width)
        yield keys, np.frombuffer(self.lengths, dtype=np.uint32), self.text if labels else b""

    def column(self, index: int) -> np.ndarray:
        """Key ``index`` of every row, in row order (a new ``uint64`` array)."""
        parts = [keys[:, index].copy() for keys, _, _ in self._parts(labels=False)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    def labels(self) -> Iterator[str]:
        """The label of every row, in row order."""
        for _, lengths, text in self._parts(labels=True):
            start = 0
            for length in lengths.tolist():
                yield text[start : start + length].decode("utf-8")
                start += length

    def smallest_labels(self, groups: np.ndarray, wanted: np.ndarray) -> dict[int, str]:
        """``group -> smallest label`` over the rows where ``wanted`` (a boolean per row) is
        set, ``groups`` giving each row's group (an integer per row)."""
        smallest: dict[int, str] = {}
        for row, label in enumerate(self.labels()):
            if wanted[row]:
                group = int(groups[row])
                if group not in smallest or label < smallest[group]:
                    smallest[group] = label
        return smallest

    def discard(self) -> None:
        """Delete the files (the rows in them are gone; the buffer stays)."""
        for path in self.files:
            if os.path.exists(path):
                os.remove(path)
        self.files = []
        self.count = len(self.lengths)
