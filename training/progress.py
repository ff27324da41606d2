"""Progress reports from the training loop, and cancellation through them.

The loop calls a :data:`ProgressCallback` after every training and validation step and once more when
an epoch's checkpoint is on disk. A caller stops training by raising :class:`TrainingCancelled` from
the callback: the loop then returns cleanly, and the run can be resumed from its last epoch checkpoint.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["prepare", "train", "val", "epoch", "finish"]


class TrainingCancelled(Exception):  # noqa: N818 -- a request, not an error condition
    """Raised by a progress callback to stop training; the last epoch checkpoint stays resumable."""


@dataclass(frozen=True)
class Progress:
    """Where training is.

    ``phase`` is ``"train"`` or ``"val"`` after a step (``step`` of ``steps`` in that phase), or
    ``"epoch"`` once the epoch is finished and checkpointed (then ``metrics`` holds the epoch's
    history record); ``"prepare"`` and ``"finish"`` between the long steps before the first epoch and
    after the last (extracting data, the final checks, calibration, the index), where no batch runs but
    a cancellation must still be heard. ``epoch`` counts from 1. ``eta_seconds`` is the estimated time
    to the end of the run, ``None`` until there is a step to measure.
    """

    phase: Phase
    epoch: int
    epochs: int
    step: int
    steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    eta_seconds: float | None = None


ProgressCallback = Callable[[Progress], None]


class EtaClock:
    """Estimates the time left from the pace of the work done since it started.

    Work is counted in loader batches (training plus validation), so a run resumed half-way is timed
    from its own steps rather than the previous process's.
    """

    def __init__(self, total_units: int, done_units: int = 0) -> None:
        self.total = total_units
        self.start_units = done_units
        self.start_time = time.perf_counter()

    def eta(self, done_units: int) -> float | None:
        worked = done_units - self.start_units
        if worked <= 0:
            return None
        elapsed = time.perf_counter() - self.start_time
        return elapsed / worked * max(0, self.total - done_units)
