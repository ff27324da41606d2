"""When a job's task puts its message back instead of ending: what both kinds of job share."""

from celery import Task
from sqlalchemy.exc import SQLAlchemyError

from core.database import unavailable
from core.jobs import DatabaseAwayError, NewerRecordError
from core.queue import DATABASE_RETRY_SECONDS, NEWER_RECORD_RETRY_SECONDS


def put_back(task: Task, error: Exception) -> BaseException | None:
    """What ``task`` raises for ``error``: a retry that puts the job's message back, untouched, when a
    newer version of the service wrote the job's record (for a worker of that version) or when the
    database could not be reached (soon, as the lease that held the job, if one did); else None: the
    error is the job's own."""
    if isinstance(error, NewerRecordError):
        return task.retry(exc=error, countdown=NEWER_RECORD_RETRY_SECONDS)
    if isinstance(error, DatabaseAwayError):
        return task.retry(exc=error, countdown=DATABASE_RETRY_SECONDS, kwargs={"holder": error.holder})
    if isinstance(error, SQLAlchemyError) and unavailable(error):
        return task.retry(exc=error, countdown=DATABASE_RETRY_SECONDS)  # before the job was held
    return None
