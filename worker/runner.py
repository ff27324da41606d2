"""What the Celery tasks do: run a job end to end and record every outcome in its job record."""

import json
import logging
import os
import socket
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from app.config import Settings
from app.imaging import BadImageError, decode_image
from app.serving import ModelManager
from models.cam.overlay import encode_png, heatmap_to_uint8, overlay_heatmap, resize_heatmap
from models.predictor import Predictor
from models.store import ModelStore
from training.config import make_config
from training.engine import CONFIG_FILE, resume, train
from worker.jobs import Job, JobStore
from worker.progress import JobProgress

logger = logging.getLogger(__name__)

RUN_DIR = "run"
INPUTS_DIR = "inputs"
RESULT_ZIP = "result.zip"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@contextmanager
def owned(jobs: JobStore, job_id: str, lock_seconds: int) -> Iterator[Job | None]:
    """The job, locked for this worker, marked running; None if it is finished or owned elsewhere.

    Whatever the body raises is recorded as the job's failure.
    """
    job = jobs.get(job_id)
    owner = _owner()
    if job.finished or not jobs.acquire(job_id, owner, lock_seconds):
        yield None
        return
    try:
        job.state, job.attempts = "running", max(job.attempts, 1)
        job.started_at = job.started_at or time.time()
        job.error = None
        jobs.save(job)
        job.params["_owner"] = owner
        yield job
    except Exception as error:
        logger.exception("job %s failed", job_id)
        job.state, job.error = "failed", f"{type(error).__name__}: {error}"
    finally:
        job.params.pop("_owner", None)
        job.finished_at = time.time() if job.finished else None
        # Only the lock holder records the outcome: if the lock was lost (the job was given to
        # another worker), that worker's record wins.
        if jobs.renew(job_id, owner, lock_seconds):
            jobs.save(job)
            jobs.release(job_id, owner)


def run_training_job(job_id: str, settings: Settings) -> Job:
    """Train (or resume) the job's run, then register its best checkpoint as a new model version."""
    jobs = JobStore.from_url(settings.redis_url, settings.jobs_dir)
    with owned(jobs, job_id, settings.job_lock_seconds) as job:
        if job is None:
            return jobs.get(job_id)
        params = job.params
        run_dir = jobs.folder(job_id) / RUN_DIR
        callback = JobProgress(jobs, job, owner=params["_owner"], lock_seconds=settings.job_lock_seconds)
        if (run_dir / CONFIG_FILE).exists():
            result = resume(run_dir, callback=callback)
        else:
            config = make_config(
                params.get("recipe", "paper"), data=params["data"], out=str(run_dir), **params["options"]
            )
            result = train(config, callback=callback)
        if result.status == "cancelled":
            job.state = "cancelled"
            return job
        store = ModelStore(settings.models_dir)
        report_path = run_dir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        version = store.add(params["name"], run_dir / "best.pt", report=report)
        if params.get("make_default"):
            store.set_default(version.name, version.version)
        job.state, job.progress, job.eta_seconds = "succeeded", 1.0, 0.0
        job.result = {
            "model": {"name": version.name, "version": version.version},
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "test_accuracy": result.test_accuracy,
            "default": bool(params.get("make_default")),
        }
    return job


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
) -> Iterator[tuple[Path, dict[str, object], bytes | None]]:
    """(path, manifest entry, overlay PNG or None) for each image, explained in batches."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images, good = [], []
        for path in chunk:
            try:
                images.append(decode_image(path.read_bytes(), max_pixels=max_pixels, name=path.name))
                good.append(path)
            except BadImageError as error:
                yield path, {"file": path.name, "error": error.message}, None
        if images:
            result = predictor.explain(images, method=method)
            names = predictor.class_names
            for path, image, probs, heatmap, target in zip(
                good, images, result.probabilities, result.heatmaps, result.targets, strict=True
            ):
                photo = np.asarray(image)
                sized = resize_heatmap(heatmap.numpy(), photo.shape[:2])
                overlay = encode_png(overlay_heatmap(photo, sized, colormap=colormap, alpha=alpha))
                ranked = sorted(
                    zip(names, probs.tolist(), strict=True), key=lambda pair: pair[1], reverse=True
                )
                entry: dict[str, object] = {
                    "file": path.name,
                    "overlay": f"overlays/{path.stem}.png",
                    "heatmap": f"heatmaps/{path.stem}.png",
                    "label": ranked[0][0],
                    "target": names[int(target)],
                    "predictions": [{"label": label, "probability": p} for label, p in ranked],
                }
                entry["_heatmap_png"] = encode_png(heatmap_to_uint8(sized))
                yield path, entry, overlay
        on_batch(start + len(chunk))


def run_heatmap_job(job_id: str, settings: Settings, predictor_for: Callable[[], Predictor]) -> Job:
    """Explain every image of the job's inputs; write a zip of overlays, heatmaps and a manifest."""
    jobs = JobStore.from_url(settings.redis_url, settings.jobs_dir)
    with owned(jobs, job_id, settings.job_lock_seconds) as job:
        if job is None:
            return jobs.get(job_id)
        folder = jobs.folder(job_id)
        paths = sorted(p for p in (folder / INPUTS_DIR).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        predictor = predictor_for()
        params = job.params
        owner = params["_owner"]
        job.epochs = len(paths)

        def on_batch(done: int) -> None:
            jobs.renew(job_id, owner, settings.job_lock_seconds)
            job.epoch, job.progress = done, done / max(1, len(paths))
            jobs.save(job)

        entries = []
        tmp = folder / f".{RESULT_ZIP}.tmp"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for _, entry, overlay in explain_images(
                predictor,
                paths,
                method=params.get("method", "gradcam"),
                colormap=params.get("colormap", "jet"),
                alpha=float(params.get("alpha", 0.5)),
                max_pixels=settings.max_image_pixels,
                batch_size=settings.batch_max_size,
                on_batch=on_batch,
            ):
                if overlay is not None:
                    archive.writestr(str(entry["overlay"]), overlay)
                    archive.writestr(str(entry["heatmap"]), entry.pop("_heatmap_png"))  # type: ignore[arg-type]
                entries.append(entry)
            manifest = {
                "model": {"name": predictor.name, "version": predictor.version},
                "method": params.get("method", "gradcam"),
                "images": entries,
            }
            archive.writestr("manifest.json", json.dumps(manifest, indent=2))
        os.replace(tmp, folder / RESULT_ZIP)
        failed = sum(1 for e in entries if "error" in e)
        job.state, job.progress = "succeeded", 1.0
        job.result = {"images": len(entries), "failed": failed, "zip": f"/explain/batch/{job_id}/result"}
    return job


def serving_manager(settings: Settings) -> ModelManager:
    """The model the API serves by default, loaded for a worker process."""
    manager = ModelManager(
        store=ModelStore(settings.models_dir),
        explicit_path=settings.model_path,
        shipped_path=settings.shipped_model_path,
        device_name=settings.device,
    )
    manager.load_initial()
    return manager
