"""Resubmitting jobs that lost their worker or their queue message."""

import logging
import time
from collections.abc import Callable

from core.jobs import Job, JobStore

logger = logging.getLogger(__name__)
RECOVERY_KEY = "trashcam:recovering"


def recover_orphans(jobs: JobStore, resubmit: Callable[[Job], None]) -> list[str]:
    """Resubmit every orphaned job (see :meth:`JobStore.orphans`); one recoverer runs at a time.

    An orphan whose cancellation was requested is marked cancelled instead.
    """
    if not jobs.redis.set(RECOVERY_KEY, "1", nx=True, ex=60):
        return []
    try:
        recovered = []
        for job in jobs.orphans():
            if job.cancel_requested:
                job.state, job.finished_at = "cancelled", time.time()
                jobs.save(job)
                continue
            logger.warning("resubmitting %s job %s (was %s)", job.kind, job.id, job.state)
            job.attempts += 1
            jobs.mark_queued(job)
            resubmit(job)
            recovered.append(job.id)
        return recovered
    finally:
        jobs.redis.delete(RECOVERY_KEY)
