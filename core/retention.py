"""Freeing the disk that finished jobs hold: their uploads, extracted data, checkpoints and results.

A job's record (a row of the database) and the small files that describe its run (config, split, history,
report, curves) stay, so ``GET /train/{id}`` still answers; a registered model lives in the model
store, never in a job's folder, so nothing here can remove one. Running and queued jobs are never
touched.
"""

import logging
import shutil
import time
from pathlib import Path

from core.jobs import Job, JobStore, NewerRecordError, folder_bytes

logger = logging.getLogger(__name__)


def remove(path: Path) -> None:
    # A data set linked in from the data root is unlinked, never followed; gone already is done.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=False, onerror=_unless_gone)
    else:
        path.unlink(missing_ok=True)


def _unless_gone(
    function: object, path: str, info: tuple[type[BaseException], BaseException, object]
) -> None:
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]


def prune_job(jobs: JobStore, job: Job, *, only: tuple[str, ...] | None = None) -> int:
    """Remove a finished job's bulky files (or those of ``only``, folder-relative); bytes freed."""
    if not job.finished:
        raise ValueError(f"job {job.id} is {job.state}: only finished jobs are pruned")
    if job.from_newer_version:
        raise NewerRecordError(job.id, job.format)  # the version that wrote it prunes it
    folder = jobs.files(job.id)
    paths = folder.bulky() if only is None else [path for path in folder.matching(only) if path.exists()]
    freed = 0
    for path in paths:
        freed += folder_bytes(path)
        remove(path)
    jobs.measure(job)  # what the key's quota counts
    return freed


def prune_finished_jobs(jobs: JobStore, *, retention_seconds: float, now: float | None = None) -> list[str]:
    """Prune every job that finished more than ``retention_seconds`` ago and is not pruned yet."""
    now = time.time() if now is None else now
    pruned = []
    for job in jobs.all():
        if not job.finished or job.pruned_at is not None or job.finished_at is None:
            continue
        if job.from_newer_version:
            continue  # that version prunes it
        if now - job.finished_at < retention_seconds:
            continue
        try:
            freed = prune_job(jobs, job)
        except OSError:
            # One job's folder (a permission, another process pruning it too) does not stop the rest.
            logger.exception("job %s: could not free its files; will try again", job.id)
            continue
        job.pruned_at = now
        jobs.save(job)
        logger.info(
            "job %s finished %.1f days ago: freed %d bytes", job.id, (now - job.finished_at) / 86400, freed
        )
        pruned.append(job.id)
    return pruned
