"""A global combine read as a singleton side input, without Beam's default-injection stage.

``beam.CombineGlobally(fn)`` guarantees one output even for an empty input: Beam adds a branch
(``DoOnce``: an impulse, and a map that reads the combined result as a side input and emits
``fn.apply([])`` when there is none), which the FnApiRunner runs as a stage of its own (about
10 ms each; five of the demo's 43 stages). When the result is only ever read as a singleton
side input, the same value comes from ``without_defaults()`` and a side-input default:
:func:`combined_singleton` gives, for every input, exactly what
``AsSingleton(pcoll | CombineGlobally(fn) | Map(then))`` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apache_beam as beam


def combined_singleton(
    pcoll: beam.PCollection,
    combine_fn: beam.CombineFn,
    label: str,
    then: Callable[[Any], Any] | None = None,
    then_label: str | None = None,
) -> beam.pvalue.AsSingleton:
    """``pcoll`` combined globally by ``combine_fn`` (then mapped by ``then``), as a singleton
    side input whose value for an empty ``pcoll`` is ``then(combine_fn.apply([]))``: Beam's
    default, computed when the graph is built instead of in a stage of its own."""
    combined = pcoll | label >> beam.CombineGlobally(combine_fn).without_defaults()
    default = combine_fn.apply([])
    if then is not None:
        combined = combined | (then_label or f"{label}Then") >> beam.Map(then)
        default = then(default)
    return beam.pvalue.AsSingleton(combined, default_value=default)


__all__ = ["combined_singleton"]
