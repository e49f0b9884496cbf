"""Time per step of a finished run, from the runner's execution-time monitoring infos.

Beam fuses steps into stages, so wall-clock time cannot be split by step; instead the SDK's
state sampler attributes the time between its samples to the transform running at the time (its
own time, not its consumers'). Summed per top-level label, that is the time each step kept a
worker busy: wall time of the worker thread, so on a loaded machine it includes waiting for a
CPU. Runners that report no such infos give an empty result.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

TOTAL_MSECS = "beam:metric:ptransform_execution_time:total_msecs:v1"
PUBLISH_AUDIT_LABEL = "Run/Audit"


def step_seconds(result: Any, step_ids: list[str]) -> dict[str, float]:
    """Seconds spent in each step (``step_ids``), plus ``run`` for the run's own artifacts and
    ``publish_audit`` for the audit of what ``write`` publishes (the run's ``Run/Audit``)."""
    try:
        infos = result.monitoring_infos()
    except (AttributeError, NotImplementedError):
        return {}
    from apache_beam.metrics.monitoring_infos import extract_counter_value

    known = set(step_ids)
    totals: dict[str, float] = defaultdict(float)
    for info in infos:
        if info.urn != TOTAL_MSECS:
            continue
        label = info.labels.get("PTRANSFORM", "")
        top = label.split("/", 1)[0]
        name = top if top in known else "run" if top == "Run" else None
        if name == "run" and label.startswith(PUBLISH_AUDIT_LABEL):
            name = "publish_audit"
        if name is None:
            continue
        totals[name] += extract_counter_value(info) / 1000.0
    return {step: round(totals[step], 1) for step in [*step_ids, "run", "publish_audit"] if step in totals}
