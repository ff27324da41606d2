"""The workers' Celery application: the one of ``core.queue``, with the tasks registered on it.

Start one worker per queue, with the pool each needs (``app.cli.WORKER_POOLS``):

    trashcam worker --queue training
    trashcam worker --queue heatmaps
"""

from celery.signals import worker_ready

from core.jobs import JobStore
from core.queue import get_celery, submit
from core.recovery import recover_orphans
from core.settings import get_settings

celery_app = get_celery()
celery_app.conf.include = ["worker.tasks.training", "worker.tasks.heatmaps"]


@worker_ready.connect
def _recover_lost_jobs(**_: object) -> None:
    """A starting worker resubmits jobs whose worker died or whose queue message Redis lost."""
    settings = get_settings()
    recover_orphans(
        JobStore.from_url(settings.redis_url, settings.jobs_dir),
        lambda job: submit(celery_app, job),
    )
