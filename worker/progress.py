"""Feeding training progress into a job record, and cancellation back out of it."""

import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from core.database import unavailable
from core.jobs import Job, JobLease, JobStore
from training.progress import Progress, TrainingCancelled

logger = logging.getLogger(__name__)


class LeaseLost(TrainingCancelled):
    """The worker no longer holds the job; another worker has it, so this one stops writing."""


class JobProgress:
    """A training progress callback that records progress in ``job`` (at most every ``interval``
    seconds, and at every epoch end) and stops training when the job is cancelled or its lease lost.
    While the database cannot be reached, training goes on: the record catches up at the next save that
    succeeds (the epochs' history is kept meanwhile), and a cancel is heard once it can be read."""

    def __init__(self, jobs: JobStore, job: Job, lease: JobLease, *, interval: float = 1.0) -> None:
        self.jobs = jobs
        self.job = job
        self.lease = lease
        self.interval = interval
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        if self.lease.lost.is_set():
            raise LeaseLost(f"job {self.job.id} is now held by another worker")
        if progress.phase in ("prepare", "finish"):
            # Between long steps: no step to record, but a cancellation to hear at once.
            self._stop_if_cancelled()
            return
        now = time.monotonic()
        if progress.phase != "epoch" and now - self._last < self.interval:
            return
        self._last = now
        self._stop_if_cancelled()
        job = self.job
        job.epoch, job.epochs = progress.epoch, progress.epochs
        if progress.phase == "epoch":
            job.history.append(dict(progress.metrics))
            job.progress = progress.epoch / progress.epochs
        else:
            job.metrics = {f"{progress.phase}_{key}": value for key, value in progress.metrics.items()}
            # Validation is short next to training; count an epoch's progress by its training steps.
            fraction = progress.step / progress.steps if progress.phase == "train" else 1.0
            job.progress = (progress.epoch - 1 + fraction) / progress.epochs
        job.eta_seconds = progress.eta_seconds
        try:
            self.jobs.save(job)
        except SQLAlchemyError as error:
            if not unavailable(error):
                raise
            logger.warning("job %s: progress not recorded, the database cannot be reached", job.id)

    def _stop_if_cancelled(self) -> None:
        try:
            cancelled = self.jobs.cancel_requested(self.job.id)
        except SQLAlchemyError as error:
            if not unavailable(error):
                raise
            return  # asked again at the next step
        if cancelled:
            self.job.cancel_requested = True
            raise TrainingCancelled(f"job {self.job.id} was cancelled")
