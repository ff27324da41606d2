"""The job queue: one Celery application per process, built from the settings, and how a job is sent.

The API sends tasks by name and never imports them or what they run; the workers
(``worker.celery_app``) register the tasks on an application built the same way. Nothing reads a task's
return value (a job's outcome is in its record), so there is no result backend.
"""

from functools import lru_cache

from celery import Celery

from core.jobs import Job, JobKind
from core.settings import Settings, get_settings

TRAIN_TASK = "trashcam.train"
HEATMAPS_TASK = "trashcam.explain_batch"
TASK_OF_KIND: dict[JobKind, str] = {"training": TRAIN_TASK, "heatmaps": HEATMAPS_TASK}


def create_celery(settings: Settings) -> Celery:
    celery = Celery("trashcam", broker=settings.redis_url)
    celery.conf.update(
        task_routes={
            TRAIN_TASK: {"queue": settings.training_queue},
            HEATMAPS_TASK: {"queue": settings.heatmaps_queue},
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A task is acknowledged only when it ends, and re-queued if its worker dies: both tasks are
        # safe to run again (training resumes from its last checkpoint, heatmaps are recomputed, and a
        # job's lease keeps two runs of it from overlapping).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.job_visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
    )
    return celery


@lru_cache
def get_celery() -> Celery:
    """This process's application, from :func:`core.settings.get_settings`."""
    return create_celery(get_settings())


def submit(celery: Celery, job: Job) -> None:
    """Queue ``job``'s task (the caller records it as queued first, see :meth:`JobStore.mark_queued`).

    The task id carries the attempt, so a resubmitted job is a new message, told apart in the logs.
    """
    celery.send_task(TASK_OF_KIND[job.kind], args=[job.id], task_id=f"{job.id}-{job.attempts}")
