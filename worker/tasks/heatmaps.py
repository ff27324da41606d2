from celery import Task

from core.model_manager import ModelManager
from core.queue import HEATMAPS_TASK
from core.settings import get_settings
from models.predictor import Predictor
from worker.celery_app import celery_app
from worker.runner import run_heatmap_job, serving_manager
from worker.tasks.retrying import put_back


class PredictorTask(Task):  # type: ignore[misc]
    """Keeps the serving model loaded in each worker process, following changes of the default."""

    _manager: ModelManager | None = None

    def predictor(self) -> Predictor:
        if self._manager is None:
            self._manager = serving_manager(get_settings())
        else:
            self._manager.refresh()
        return self._manager.predictor


# Put back as often as it takes (a retry's max_retries=None would mean Celery's default of 3).
@celery_app.task(name=HEATMAPS_TASK, bind=True, base=PredictorTask, max_retries=None)
def explain_batch(self: PredictorTask, job_id: str, holder: str | None = None) -> str:
    """Run heatmap batch job ``job_id``; returns its final state. A job whose record a newer version of the
    service wrote is put back on the queue, untouched, for a worker of that version; one that met the
    database away comes back shortly (as the lease that held it, ``holder``, if it held it)."""
    try:
        return run_heatmap_job(job_id, get_settings(), self.predictor, holder=holder).state
    except Exception as error:
        retry = put_back(self, error)
        if retry is None:
            raise
        raise retry from None
