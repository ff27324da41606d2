"""The Celery application, configured from the service's settings.

Start one worker per queue, with the pool each needs (``app.cli.WORKER_POOLS``):

    trashcam worker --queue training
    trashcam worker --queue heatmaps
"""

from celery import Celery
from celery.signals import worker_ready

from app.config import Settings, get_settings

TRAIN_TASK = "trashcam.train"
HEATMAPS_TASK = "trashcam.explain_batch"


def create_celery(settings: Settings) -> Celery:
    app = Celery("trashcam", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        include=["worker.tasks.training", "worker.tasks.heatmaps"],
        task_routes={
            TRAIN_TASK: {"queue": settings.training_queue},
            HEATMAPS_TASK: {"queue": settings.heatmaps_queue},
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A task is acknowledged only when it ends, and re-queued if its worker dies: both tasks are
        # safe to run again (training resumes from its last checkpoint, heatmaps are recomputed).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.job_visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600,
    )
    return app


celery_app = create_celery(get_settings())


@worker_ready.connect
def _recover_lost_jobs(**_: object) -> None:
    """A starting worker resubmits jobs whose worker died or whose queue message Redis lost."""
    from worker.jobs import JobStore
    from worker.recovery import recover_orphans, submit

    settings = get_settings()
    recover_orphans(
        JobStore.from_url(settings.redis_url, settings.jobs_dir),
        lambda job: submit(celery_app, job),
        settings.job_lock_seconds,
    )
