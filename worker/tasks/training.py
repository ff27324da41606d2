from celery import Task

from core.queue import TRAIN_TASK
from core.settings import get_settings
from worker.celery_app import celery_app
from worker.runner import run_training_job


@celery_app.task(name=TRAIN_TASK, bind=True)
def train_model(self: Task, job_id: str) -> str:
    """Run training job ``job_id``; returns its final state."""
    return run_training_job(job_id, get_settings()).state
