"""The job queue: one Celery application per process, built from the settings, and how a job is sent.

The API sends tasks by name and never imports them or what they run; the workers
(``worker.celery_app``) register the tasks on an application built the same way. Nothing reads a task's
return value (a job's outcome is in its record), so there is no result backend.
"""

from dataclasses import dataclass
from functools import lru_cache

from celery import Celery

from core.jobs import Job, JobKind
from core.settings import Settings, get_settings

TRAIN_TASK = "trashcam.train"
HEATMAPS_TASK = "trashcam.explain_batch"
#: How long a job that a worker of an older version put back waits before it is offered again (to any
#: worker on its queue: during a rolling deploy, soon one of the newer version).
NEWER_RECORD_RETRY_SECONDS = 30
#: How long a job's message waits before it is tried again when the database could not be reached.
DATABASE_RETRY_SECONDS = 5


@dataclass(frozen=True)
class KindOfJob:
    """How one kind of job runs: its task, and the Celery pool of the workers on its queue."""

    task: str
    pool: tuple[str, ...]


#: Every kind of job. A training job's data loader starts processes of its own, which a prefork pool's
#: child may not (it is daemonic), so training runs in the worker process itself. Heatmap batches start
#: none; their prefork child is recycled after each task, returning its memory.
KINDS_OF_JOBS: dict[JobKind, KindOfJob] = {
    "training": KindOfJob(TRAIN_TASK, ("--pool", "solo")),
    "heatmaps": KindOfJob(HEATMAPS_TASK, ("--pool", "prefork", "-c", "1", "--max-tasks-per-child", "1")),
}


def queue_of(kind: JobKind, settings: Settings) -> str:
    """The queue that ``kind``'s jobs wait in (named in the settings)."""
    return {"training": settings.training_queue, "heatmaps": settings.heatmaps_queue}[kind]


def create_celery(settings: Settings) -> Celery:
    celery = Celery("trashcam", broker=settings.redis_url)
    celery.conf.update(
        task_routes={spec.task: {"queue": queue_of(kind, settings)} for kind, spec in KINDS_OF_JOBS.items()},
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
    celery.send_task(KINDS_OF_JOBS[job.kind].task, args=[job.id], task_id=f"{job.id}-{job.attempts}")
