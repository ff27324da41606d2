"""What the Celery tasks do: run a job end to end and record every outcome in its job record."""

import json
import logging
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from core.confinement import check_confined
from core.database import unavailable
from core.explain import explanation
from core.imaging import BadImageError, decode_image
from core.job_folder import RESULT_MANIFEST, SPENT_AFTER_TRAINING, JobFolder
from core.jobs import (
    PHOTO_SUFFIXES,
    DatabaseAwayError,
    HeatmapParams,
    Job,
    JobLease,
    JobStore,
    NewerRecordError,
    TrainingParams,
)
from core.model_manager import ModelManager, model_store
from core.redaction import path_labels
from core.retention import prune_job
from core.settings import Settings
from models.files import atomic_open, redact_paths
from models.predictor import Predictor
from training.archive import ArchiveError, extract_archive
from training.engine import resume, train
from training.split import parse_data_sets
from worker.processes import train_in_processes
from worker.progress import JobProgress, LeaseLost

logger = logging.getLogger(__name__)


@dataclass
class Held:
    """A job this worker holds, with the lease that proves it."""

    job: Job
    lease: JobLease


def _public_error(error: Exception, folder: Path, labels: Mapping[str, str]) -> str:
    """The error for the job record, without the server's paths: the job's own folder is ``<job>``,
    the other folders a user knows by their labels, any other folder left out."""
    return redact_paths(f"{type(error).__name__}: {error}", {**labels, str(folder): "<job>"})


@contextmanager
def held(
    jobs: JobStore,
    job_id: str,
    lease_seconds: int,
    labels: Mapping[str, str] | None = None,
    *,
    holder: str | None = None,
) -> Iterator[Held | None]:
    """The job, leased to this worker and marked running; None if it is finished, cancelled or held
    elsewhere. The outcome is saved at the end (a failure with its error) unless the lease no longer
    holds the job, in which case the worker now holding it records it. :class:`NewerRecordError`, with
    the job untouched, when a newer version of the service wrote its record. When the database cannot
    be reached, the job is not failed for it: its record stays as it was, and
    :class:`DatabaseAwayError` names this lease's ``holder`` for the task to try again as (its heartbeat
    may outlive it: the database could not remove it); should no retry come, recovery resubmits the
    job once its heartbeat is stale. Training resumes from its last checkpoint."""
    lease = jobs.lease(job_id, lease_seconds, holder=holder)
    if not lease.acquire():
        yield None
        return
    try:
        job = jobs.get(job_id)  # read again now that no one else can write it
    except BaseException as error:
        lease.release()
        if isinstance(error, SQLAlchemyError) and unavailable(error):
            raise DatabaseAwayError(job_id, lease.holder) from error
        raise
    if job.from_newer_version:
        lease.release()
        if job.finished:
            yield None  # nothing left to do, and nothing this version may write
            return
        raise NewerRecordError(job_id, job.format)
    away: SQLAlchemyError | None = None
    try:
        if job.finished:
            yield None
            return
        if job.cancel_requested:
            job.state = "cancelled"
            yield None
            return
        job.state, job.attempts = "running", max(job.attempts, 1)
        job.started_at = job.started_at or time.time()
        job.error = None
        jobs.save(job)
        yield Held(job, lease)
    except LeaseLost:
        logger.warning("job %s: lease lost; another worker carries on", job_id)
    except Exception as error:
        if isinstance(error, SQLAlchemyError) and unavailable(error):
            logger.warning("job %s: the database cannot be reached; the job is left to be resumed", job_id)
            away = error
        else:
            logger.exception("job %s failed", job_id)
            job.state, job.error = "failed", _public_error(error, jobs.folder(job_id), labels or {})
    finally:
        try:
            # Asked now, not at the lease's next beat: a worker that stalled and lost the job to another
            # must not save its stale record over the new holder's.
            if away is None and lease.holds():
                job.finished_at = time.time() if job.finished else None
                jobs.save(job)
        finally:
            lease.release()
    if away is not None:
        raise DatabaseAwayError(job_id, lease.holder) from away


def run_training_job(job_id: str, settings: Settings, *, holder: str | None = None) -> Job:
    """Train (or resume) the job's run, then register its best checkpoint as a new model version
    (``holder``: see :func:`held`)."""
    jobs = JobStore.from_settings(settings)
    with held(jobs, job_id, settings.job_lock_seconds, path_labels(settings), holder=holder) as holding:
        if holding is None:
            return jobs.get(job_id)
        job, params = holding.job, holding.job.params
        if not isinstance(params, TrainingParams):
            raise TypeError(f"job {job_id} is a {params.kind} job, not a training job")
        # A record is read as stored even where today's limits refuse it; it runs only within them.
        params = params.within_limits()
        run = jobs.files(job_id).run
        callback = JobProgress(jobs, job, holding.lease)
        # The data root's links may have changed since the job was submitted: checked again here.
        data = params.config.data
        entries = [data] if isinstance(data, str) else list(data)
        check_confined([path for _, path in parse_data_sets(entries)], settings.resolved_data_root)
        # Built and checked when the job was created; the run goes where the job's folder is now.
        config = params.config.replace(out=str(run.path))
        if params.processes > 1:
            result = train_in_processes(config, params.processes, callback)
        elif run.config.exists():
            result = resume(run.path, callback=callback)
        else:
            result = train(config, callback=callback)
        if holding.lease.lost.is_set():
            raise LeaseLost(job_id)
        if result.status == "cancelled":
            job.state = "cancelled"
            return job
        store = model_store(settings)
        report = json.loads(run.report.read_text()) if run.report.is_file() else None
        # The similar-photos index and the feature bank go with the weights they were computed with.
        version = store.add(params.name, run.best, report=report, extra=run.served_with_best())
        if params.make_default:
            store.set_default(
                version.name, version.version, by=job.submitted_by, reason=f"training job {job_id}"
            )
        job.state, job.progress, job.eta_seconds = "succeeded", 1.0, 0.0
        job.result = {
            "model": {"name": version.name, "version": version.version},
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "test_accuracy": result.test_accuracy,
            "default": params.make_default,
        }
        recipe = version.spec.recipe
        if recipe.get("base") or recipe.get("init_sha256"):
            # Fine-tuned: where it started, and which classifier rows it kept from there.
            job.result["base"] = {"ref": recipe.get("base"), "sha256": recipe.get("init_sha256")}
            job.result["transfer"] = recipe.get("transfer")
            job.result["retention"] = recipe.get("retention")
            # How near the base the model was moved to keep what the site did not upload.
            job.result["forgetting_check"] = recipe.get("forgetting_check")
        job.result["calibrated"] = bool(version.spec.calibration)
    finished = jobs.get(job_id)
    if finished.state == "succeeded":
        # Only once success is on record: the extracted copies of the data set and of the replayed photos
        # are not needed again, nor are the checkpoints (the model is in the store, and a finished run
        # is not resumed). The upload, the record and the report stay until the retention time.
        prune_job(jobs, finished, only=SPENT_AFTER_TRAINING)
    return finished


@dataclass(frozen=True)
class ExplainedImage:
    entry: dict[str, object]  # the manifest entry
    overlay_png: bytes | None  # None when the image could not be read
    heatmap_png: bytes | None


def shown_name(path: Path, root: Path | None) -> str:
    """A photo's name in a batch's manifest: its path inside the upload (archive folders kept), else its
    file name."""
    return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.name


def explain_images(
    predictor: Predictor,
    paths: list[Path],
    *,
    method: str,
    colormap: str,
    alpha: float,
    max_pixels: int,
    batch_size: int,
    on_batch: Callable[[int], None],
    max_bytes: int | None = None,
    root: Path | None = None,
) -> Iterator[ExplainedImage]:
    """Each image explained, in batches; its outputs are named by position, so equal names cannot clash."""
    for start in range(0, len(paths), batch_size):
        chunk = list(enumerate(paths[start : start + batch_size], start=start))
        decoded = []
        for index, path in chunk:
            try:
                decoded.append(
                    (
                        index,
                        path,
                        decode_image(
                            path.read_bytes(), max_pixels=max_pixels, max_bytes=max_bytes, name=path.name
                        ),
                    )
                )
            except BadImageError as error:
                yield ExplainedImage({"file": shown_name(path, root), "error": error.message}, None, None)
        if decoded:
            result = predictor.explain([image for _, _, image in decoded], method=method)
            for (index, path, image), probs, energy, distance, heatmap, target, answered_by, backend in zip(
                decoded,
                result.probabilities,
                result.energies,
                result.distance_list(),
                result.heatmaps,
                result.targets,
                result.answered_by,
                result.backends,
                strict=True,
            ):
                shown = explanation(
                    answered_by,
                    image,
                    probabilities=probs.tolist(),
                    energy=float(energy),
                    distance=distance,
                    heatmap=heatmap.numpy(),
                    target=int(target),
                    colormap=colormap,
                    alpha=alpha,
                )
                entry: dict[str, object] = {
                    "file": shown_name(path, root),
                    "model": {"name": answered_by.name, "version": answered_by.version},
                    "backend": backend,
                    "overlay": f"overlays/{index:05d}.png",
                    "heatmap": f"heatmaps/{index:05d}.png",
                    "label": shown.label,
                    "target": shown.target_label,
                    "predictions": [{"label": label, "probability": p} for label, p in shown.predictions],
                    "calibrated": shown.calibrated,
                    "energy": shown.energy,
                    "distance": shown.distance,
                    "unsure": shown.unsure,
                    "unsure_reasons": shown.unsure_reasons,
                }
                yield ExplainedImage(entry, shown.overlay_png, shown.heatmap_png)
        on_batch(start + len(chunk))


def unpack_inputs(folder: JobFolder, settings: Settings) -> None:
    """Extract a heatmap batch's uploaded archive into its inputs (once: a resubmitted job finds them
    there), then free the archive. The request vetted its member list; extraction checks again."""
    if folder.inputs.is_dir():
        return
    uploaded = folder.uploads()
    if not uploaded:
        raise ArchiveError("the batch has neither photos nor an archive of them")
    extract_archive(
        uploaded[0],
        folder.inputs,
        max_bytes=settings.max_archive_bytes,
        max_files=settings.max_archive_files,
        max_ratio=settings.max_archive_ratio,
    )
    uploaded[0].unlink()


def run_heatmap_job(
    job_id: str, settings: Settings, predictor_for: Callable[[], Predictor], *, holder: str | None = None
) -> Job:
    """Explain every image of the job's inputs; write a zip of overlays, heatmaps and a manifest
    (``holder``: see :func:`held`)."""
    jobs = JobStore.from_settings(settings)
    with held(jobs, job_id, settings.job_lock_seconds, path_labels(settings), holder=holder) as holding:
        if holding is None:
            return jobs.get(job_id)
        job, params, lease = holding.job, holding.job.params, holding.lease
        if not isinstance(params, HeatmapParams):
            raise TypeError(f"job {job_id} is a {params.kind} job, not a heatmap batch")
        folder = jobs.files(job_id)
        unpack_inputs(folder, settings)
        paths = sorted(
            p for p in folder.inputs.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
        )
        predictor = predictor_for()
        job.images = len(paths)

        started = time.monotonic()

        def on_batch(done: int) -> None:
            if lease.lost.is_set():
                raise LeaseLost(job_id)
            job.images_done, job.progress = done, done / max(1, len(paths))
            # The photos left at the pace of those done so far.
            job.eta_seconds = (time.monotonic() - started) / done * (len(paths) - done) if done else None
            jobs.save(job)

        entries = []
        with atomic_open(folder.result_zip) as handle, zipfile.ZipFile(handle, "w") as archive:
            for explained in explain_images(
                predictor,
                paths,
                method=params.method,
                colormap=params.colormap,
                alpha=params.alpha,
                max_pixels=settings.max_image_pixels,
                max_bytes=settings.max_image_bytes,
                root=folder.inputs,
                batch_size=settings.batch_max_size,
                on_batch=on_batch,
            ):
                if explained.overlay_png is not None and explained.heatmap_png is not None:
                    archive.writestr(str(explained.entry["overlay"]), explained.overlay_png)
                    archive.writestr(str(explained.entry["heatmap"]), explained.heatmap_png)
                entries.append(explained.entry)
            manifest = {
                "model": {"name": predictor.name, "version": predictor.version},
                "method": params.method,
                "images": entries,
            }
            archive.writestr(RESULT_MANIFEST, json.dumps(manifest, indent=2))
        failed = sum(1 for e in entries if "error" in e)
        job.state, job.progress = "succeeded", 1.0
        job.result = {"images": len(entries), "failed": failed, "zip": f"/explain/batch/{job_id}/result"}
    return jobs.get(job_id)


def serving_manager(settings: Settings) -> ModelManager:
    """The model the API serves by default, loaded for a worker process."""
    manager = ModelManager.from_settings(settings)
    manager.load_initial()
    return manager
