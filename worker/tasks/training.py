from celery import Task

from core.queue import TRAIN_TASK
from core.settings import get_settings
from worker.celery_app import celery_app
from worker.runner import run_training_job
from worker.tasks.retrying import put_back


# Put back as often as it takes (a retry's max_retries=None would mean Celery's default of 3).
@celery_app.task(name=TRAIN_TASK, bind=True, max_retries=None)
def train_model(self: Task, job_id: str, holder: str | None = None) -> str:
    """Run training job ``job_id``; returns its final state. A job whose record a newer version of the
    service wrote is put back on the queue, untouched, for a worker of that version; one that met the
    database away comes back shortly (as the lease that held it, ``holder``, if it held it)."""
    try:
        return run_training_job(job_id, get_settings(), holder=holder).state
    except Exception as error:
        retry = put_back(self, error)
        if retry is None:
            raise
        raise retry from None
