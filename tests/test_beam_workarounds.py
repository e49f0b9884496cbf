"""The data-plane workaround: runner-side streams have no flushing timer thread."""

from __future__ import annotations

import threading
import time

from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane

from pipelines import beam_workarounds
from pipelines.run import make_options


def test_runs_use_size_based_data_streams():
    make_options([])
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
    stream = data_plane.ClosableOutputStream.create(
        lambda data: None, lambda data: None, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
    )
    assert not isinstance(stream, data_plane.TimeBasedBufferingClosableOutputStream)


def test_the_time_based_stream_loses_bytes_and_the_size_based_one_does_not():
    """Beam's race (see pipelines/beam_workarounds.py), shown on the stream classes themselves."""

    def send(stream_factory):
        sent: list[bytes] = []
        lock = threading.Lock()

        def slow_send(data: bytes) -> None:
            time.sleep(0.002)  # a flush that takes a moment, like a gRPC send
            with lock:
                sent.append(data)

        out = stream_factory(sent.append, slow_send)
        for _ in range(200):
            out.write(b"x" * 1000)
            out.maybe_flush()
            time.sleep(0.001)
        out.close()
        return sum(map(len, sent))

    beam_workarounds.apply()
    size_based = send(
        lambda close, flush: data_plane.ClosableOutputStream.create(
            close, flush, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
        )
    )
    assert size_based == 200_000
    lossy = [
        send(
            lambda close, flush: data_plane.TimeBasedBufferingClosableOutputStream(
                close, flush_callback=flush, time_flush_threshold_ms=1
            )
        )
        for _ in range(5)
    ]
    assert min(lossy) < 200_000  # the race beam_workarounds avoids (if Beam fixes it, drop the workaround)
