"""Heatmap batches: many photos explained by a worker, returned as one zip."""

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.deps import JobsDep, ReadAccess, SettingsDep, SubmitterDep, TrainerDep
from app.errors import check_cam_options, error_responses, too_large
from app.jobs import discard, enqueue, store_photos
from app.routes.training import find_job, job_public
from app.schemas import JobPublic
from core.jobs import HeatmapParams, new_job_id
from models.cam import list_cam_methods
from models.cam.overlay import list_colormaps

router = APIRouter(prefix="/explain/batch", tags=["inference"], responses=error_responses(400, 422))


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses=error_responses(401, 403, 413, 415, 422, 429, 503, 507),
)
async def create_heatmap_batch(
    response: Response,
    settings: SettingsDep,
    jobs: JobsDep,
    submit: SubmitterDep,
    caller: TrainerDep,
    files: Annotated[list[UploadFile], File(description="photos, or one archive (.zip, .tar.gz) of photos")],
    method: Annotated[
        str,
        Form(
            description=f"one of: {', '.join(list_cam_methods())}",
            json_schema_extra={"enum": list_cam_methods()},
        ),
    ] = "gradcam",
    alpha: Annotated[float, Form(ge=0.0, le=1.0)] = 0.5,
    colormap: Annotated[
        str,
        Form(
            description=f"one of: {', '.join(list_colormaps())}", json_schema_extra={"enum": list_colormaps()}
        ),
    ] = "jet",
) -> JobPublic:
    """Explain many photos in the background; 202 with the job. Its result is a zip of overlays,
    heatmaps and a JSON manifest of predictions. Needs an API key: it takes worker time and disk."""
    check_cam_options(method, colormap)
    if len(files) > settings.max_archive_files:
        raise too_large(f"{len(files)} files is over the limit of {settings.max_archive_files}")
    job_id = new_job_id()
    folder = jobs.folder(job_id)
    try:
        uploads = [(upload.filename or "photo", upload.file) for upload in files]
        await run_in_threadpool(store_photos, uploads, folder, settings)
    except BaseException:
        discard(folder)
        raise
    params = HeatmapParams(method=method, alpha=alpha, colormap=colormap)
    job = await run_in_threadpool(enqueue, jobs, submit, params, job_id, settings, caller.name)
    response.headers["Location"] = f"/explain/batch/{job.id}"
    return job_public(job)


@router.get(
    "/{job_id}", response_model=JobPublic, responses=error_responses(401, 404), dependencies=[ReadAccess]
)
def read_heatmap_batch(job_id: str, jobs: JobsDep) -> JobPublic:
    """State and progress of a heatmap batch (``epoch``/``epochs``: images done / in the batch)."""
    return job_public(find_job(jobs, job_id, "heatmaps"))


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, **error_responses(401, 404, 409, 410)},
    dependencies=[ReadAccess],
)
def read_heatmap_batch_result(job_id: str, jobs: JobsDep) -> FileResponse:
    """The zip: overlays/*.png, heatmaps/*.png and manifest.json. 409 until the job has succeeded."""
    job = find_job(jobs, job_id, "heatmaps")
    if job.state != "succeeded":
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {job.state}; its result is not ready")
    if job.pruned_at is not None:
        raise HTTPException(
            status.HTTP_410_GONE, f"job {job_id}'s result was removed after the retention time"
        )
    return FileResponse(
        jobs.files(job_id).result_zip, media_type="application/zip", filename=f"heatmaps-{job_id}.zip"
    )
