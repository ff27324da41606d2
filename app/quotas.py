"""Bounds on jobs: how many wait in the queues, and what each key may have queued, running and on disk.

Checked twice: by the gate before a job's upload is read (a key over its quota sends nothing for
nothing), and when the job is recorded, with the upload's size counted, under a lock so that two
requests of one key at once cannot both take its last place.
"""

import threading

from fastapi import HTTPException, status
from sqlalchemy.exc import SQLAlchemyError

from app.errors import database_down
from core.database import unavailable
from core.jobs import JobStore
from core.settings import Settings

#: Seconds a refused client is told to wait: about what a short job takes.
RETRY_AFTER_S = 60
#: One API process records one job at a time, checking its quota first.
admission = threading.Lock()


def check_job_quota(
    jobs: JobStore, settings: Settings, key_name: str | None, *, adding_bytes: int = 0
) -> None:
    """503 when the queues are full, 429 when the key has too many jobs queued or running, or its jobs'
    folders (with ``adding_bytes`` more) would hold more than its share of the disk."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    try:
        queued, usage = jobs.queued_count(), jobs.usage(key_name)
    except SQLAlchemyError as error:
        # Also checked before the app's routes (app.limits), where its error handlers do not reach.
        if unavailable(error):
            raise database_down() from None
        raise
    if queued >= settings.max_queued_jobs:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the job queues are full: {queued} jobs wait, the limit is {settings.max_queued_jobs} "
            "(TRASHCAM_MAX_QUEUED_JOBS); try again later",
            headers=retry,
        )
    who = f"key {key_name!r}" if key_name else "this key"
    if usage.active >= settings.max_active_jobs_per_key:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{who} has {usage.active} jobs queued or running, the limit is "
            f"{settings.max_active_jobs_per_key} (TRASHCAM_MAX_ACTIVE_JOBS_PER_KEY); wait for one to "
            "finish, or cancel one (DELETE it)",
            headers=retry,
        )
    if usage.disk_bytes + adding_bytes > settings.max_job_bytes_per_key:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{who}'s jobs hold {usage.disk_bytes} bytes on disk"
            + (f", {adding_bytes} more with this one" if adding_bytes else "")
            + f"; the limit is {settings.max_job_bytes_per_key} (TRASHCAM_MAX_JOB_BYTES_PER_KEY): free "
            "finished training jobs' files (DELETE with purge=true) or wait for their retention time "
            f"({settings.job_retention_days:g} days)",
            headers=retry,
        )
