"""Feeding training progress into a job record, and cancellation back out of it."""

import time

from training.progress import Progress, TrainingCancelled
from worker.jobs import Job, JobStore


class JobProgress:
    """A training progress callback that updates ``job`` (at most every ``interval`` seconds, and at
    every epoch end), keeps the job's lock alive, and raises :class:`TrainingCancelled` once a
    cancellation was requested."""

    def __init__(
        self, jobs: JobStore, job: Job, *, owner: str, lock_seconds: int, interval: float = 1.0
    ) -> None:
        self.jobs = jobs
        self.job = job
        self.owner = owner
        self.lock_seconds = lock_seconds
        self.interval = interval
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase != "epoch" and now - self._last < self.interval:
            return
        self._last = now
        if not self.jobs.renew(self.job.id, self.owner, self.lock_seconds):
            raise TrainingCancelled(f"job {self.job.id} is now owned by another worker")
        if self.jobs.cancel_requested(self.job.id):
            self.job.cancel_requested = True
            raise TrainingCancelled(f"job {self.job.id} was cancelled")
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
        self.jobs.save(job)
