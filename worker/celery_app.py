"""The workers' Celery application: the one of ``core.queue``, with the tasks registered on it.

Start one worker per queue, with the pool each needs (``core.queue.KINDS_OF_JOBS``):

    trashcam worker --queue training
    trashcam worker --queue heatmaps
"""

from celery.signals import worker_ready, worker_shutdown

from core.heartbeat import Heartbeat
from core.jobs import JobStore
from core.queue import get_celery, submit
from core.recovery import recover_orphans
from core.settings import get_settings

celery_app = get_celery()
celery_app.conf.include = ["worker.tasks.training", "worker.tasks.heatmaps"]

_heartbeats: list[Heartbeat] = []


@worker_ready.connect
def _start_heartbeat(sender: object, **_: object) -> None:
    """The key that ``trashcam ping`` (a container's health check) and ``/ready`` read."""
    heartbeat = Heartbeat(get_settings(), str(getattr(sender, "hostname", "worker")))
    heartbeat.start()
    _heartbeats.append(heartbeat)


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    while _heartbeats:
        _heartbeats.pop().stop()


@worker_ready.connect
def _recover_lost_jobs(**_: object) -> None:
    """A starting worker resubmits jobs whose worker died or whose queue message Redis lost."""
    settings = get_settings()
    recover_orphans(
        JobStore.from_settings(settings),
        lambda job: submit(celery_app, job),
    )
