"""Heatmap batches: many photos explained by a worker, returned as one zip."""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from fastapi.responses import FileResponse

from app.deps import JobsDep, ReadAccess, SettingsDep, SubmitterDep
from app.jobs import archive_name, discard, save_upload, unprocessable, vet_archive
from app.routes.classify import ERRORS
from app.routes.jobs import find_job, job_public
from app.schemas import JobPublic
from app.uploads import read_upload
from models.cam import list_cam_methods
from models.cam.overlay import list_colormaps
from training.archive import ArchiveError, extract_archive, is_archive
from worker.jobs import new_job_id
from worker.runner import IMAGE_SUFFIXES, INPUTS_DIR, RESULT_ZIP

router = APIRouter(prefix="/explain/batch", tags=["inference"], dependencies=[ReadAccess])


@router.post("", status_code=202, response_model=JobPublic, responses=ERRORS)
async def create_heatmap_batch(
    response: Response,
    settings: SettingsDep,
    jobs: JobsDep,
    submit: SubmitterDep,
    files: Annotated[list[UploadFile], File(description="photos, or one archive (.zip, .tar.gz) of photos")],
    method: Annotated[str, Form(description=f"one of: {', '.join(list_cam_methods())}")] = "gradcam",
    alpha: Annotated[float, Form(ge=0.0, le=1.0)] = 0.5,
    colormap: Annotated[str, Form(description=f"one of: {', '.join(list_colormaps())}")] = "jet",
) -> JobPublic:
    """Explain many photos in the background; 202 with the job. Its result is a zip of overlays,
    heatmaps and a JSON manifest of predictions."""
    if method not in list_cam_methods():
        raise unprocessable(f"unknown method {method!r}; valid methods: {', '.join(list_cam_methods())}")
    if colormap not in list_colormaps():
        raise unprocessable(f"unknown colormap {colormap!r}; valid colormaps: {', '.join(list_colormaps())}")
    job_id = new_job_id()
    folder = jobs.folder(job_id)
    inputs = folder / INPUTS_DIR
    inputs.mkdir(parents=True)
    try:
        count = await store_inputs(files, folder, settings)
        if count == 0:
            raise unprocessable(f"no photos found (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    except BaseException:
        discard(folder)
        raise
    job = jobs.create("heatmaps", {"method": method, "alpha": alpha, "colormap": colormap}, job_id=job_id)
    jobs.mark_queued(job)
    submit(job)
    response.headers["Location"] = f"/explain/batch/{job.id}"
    return job_public(job)


async def store_inputs(files: list[UploadFile], folder: Path, settings: SettingsDep) -> int:
    """Save the photos (or unpack the archive) under the job folder; return the number of photos."""
    inputs = folder / INPUTS_DIR
    if len(files) == 1 and is_archive(files[0].filename or ""):
        archive = await save_upload(
            files[0], folder / archive_name(files[0]), max_bytes=settings.max_archive_upload_bytes
        )
        vet_archive(archive, settings, label=files[0].filename or "upload")
        inputs.rmdir()
        try:
            extract_archive(
                archive, inputs, max_bytes=settings.max_archive_bytes, max_files=settings.max_archive_files
            )
        except ArchiveError as error:
            raise unprocessable(f"{files[0].filename}: {error}") from None
        archive.unlink()
    else:
        if len(files) > settings.max_archive_files:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE, f"more than {settings.max_archive_files} files"
            )
        for index, upload in enumerate(files):
            suffix = Path(upload.filename or "").suffix.lower()
            if suffix not in IMAGE_SUFFIXES:
                raise HTTPException(
                    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                    f"{upload.filename}: expected a photo ({', '.join(IMAGE_SUFFIXES)}) or one archive",
                )
            data = await read_upload(upload, max_bytes=settings.max_upload_bytes)
            # Numbered names keep duplicates apart and keep client paths out of the file system.
            (inputs / f"{index:05d}-{Path(upload.filename or 'photo').stem[:64]}{suffix}").write_bytes(data)
    return sum(1 for p in inputs.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def read_heatmap_batch(job_id: str, jobs: JobsDep) -> JobPublic:
    """State and progress of a heatmap batch."""
    return job_public(find_job(jobs, job_id, "heatmaps"))


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, 404: {}, 409: {}},
)
def read_heatmap_batch_result(job_id: str, jobs: JobsDep) -> FileResponse:
    """The zip: overlays/*.png, heatmaps/*.png and manifest.json. 409 until the job has succeeded."""
    job = find_job(jobs, job_id, "heatmaps")
    if job.state != "succeeded":
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {job.state}; its result is not ready")
    return FileResponse(
        jobs.folder(job_id) / RESULT_ZIP, media_type="application/zip", filename=f"heatmaps-{job_id}.zip"
    )
