"""The Beam side of :mod:`transforms.instruction_pairs`: the screening pass and the pair-making
ParDo over screened trajectories."""

from __future__ import annotations

import apache_beam as beam

from schemas import Trajectory
from transforms.beam.records import RecordDoFn
from transforms.instruction_pairs import ELIGIBLE, RANKS, PairMaker, draw_rank

#: A trajectory with its screening (:data:`transforms.instruction_pairs.Screening`).
SCREENED = beam.typehints.Tuple[Trajectory, beam.typehints.Tuple[str, str]]


class Screen(beam.DoFn):
    """The screening pass: ``(trajectory, screening)`` for every trajectory, and on the
    :data:`RANKS` output the draw's rank of each eligible one (one conversation read each)."""

    def __init__(self, maker: PairMaker, balance: bool) -> None:
        self.maker = maker
        self.balance = balance

    def process(self, trajectory):  # no annotation: Beam type-checks process hints
        screening = self.maker.screen(trajectory)
        yield trajectory, screening
        if screening == ELIGIBLE:
            context = self.maker.context
            yield beam.pvalue.TaggedOutput(RANKS, draw_rank(trajectory, context.seed, context.step_id, self.balance))


class ScreenedRecordDoFn(RecordDoFn):
    """:class:`RecordDoFn` over ``(trajectory, screening)``: the processor gets the screening,
    the ledger and the rejected records see the trajectory alone (as without screening)."""

    def process(self, element, **side_inputs):  # no annotation: Beam type-checks process hints
        trajectory, screening = element
        return super().process(trajectory, screening=screening, **side_inputs)
