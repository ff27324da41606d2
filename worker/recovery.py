"""Resubmitting jobs that lost their worker or their queue message."""

import logging

from celery import Celery

from app.config import Settings
from worker.jobs import Job, JobStore

logger = logging.getLogger(__name__)


def submit(celery: Celery, job: Job) -> None:
    """Queue ``job``'s task (the caller records it as queued first, see :meth:`JobStore.mark_queued`)."""
    from worker.celery_app import HEATMAPS_TASK, TRAIN_TASK

    name = TRAIN_TASK if job.kind == "training" else HEATMAPS_TASK
    celery.send_task(name, args=[job.id], task_id=f"{job.id}-{job.attempts}")


def resubmit_orphans(celery: Celery, settings: Settings) -> list[str]:
    jobs = JobStore.from_url(settings.redis_url, settings.jobs_dir)
    resubmitted = []
    for job in jobs.orphans():
        logger.warning("resubmitting %s job %s (was %s)", job.kind, job.id, job.state)
        job.attempts += 1
        jobs.mark_queued(job)
        submit(celery, job)
        resubmitted.append(job.id)
    return resubmitted
