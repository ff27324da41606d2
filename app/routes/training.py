"""Training jobs: POST /train starts one, GET /train/{id} follows it, DELETE /train/{id} cancels it."""

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.deps import JobsDep, ReadAccess, SettingsDep, SubmitterDep, WriteAccess
from app.errors import error_responses, unprocessable
from app.jobs import discard, enqueue, public_params, store_training_data
from app.schemas import JobPublic
from models import create_model, list_models
from models.store import validate_name
from training.config import RECIPES, make_config
from worker.jobs import Job, JobKind, JobNotFoundError, JobStore, new_job_id

router = APIRouter(prefix="/train", tags=["training"])


def job_public(job: Job) -> JobPublic:
    return JobPublic(**{**job.__dict__, "params": public_params(job.params)})


def find_job(jobs: JobStore, job_id: str, kind: JobKind) -> Job:
    try:
        job = jobs.get(job_id)
    except JobNotFoundError:
        job = None
    if job is None or job.kind != kind:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {kind} job {job_id!r}")
    return job


def training_options(model: str, model_kwargs: str | None, **values: Any) -> dict[str, Any]:
    """The TrainConfig overrides of a request; 422 for options the network does not take."""
    options: dict[str, Any] = {
        "model": model,
        **{key: value for key, value in values.items() if value is not None},
    }
    if model_kwargs:
        try:
            options["model_kwargs"] = dict(json.loads(model_kwargs))
        except (ValueError, TypeError) as error:
            raise unprocessable(f"model_kwargs must be a JSON object: {error}") from None
        try:  # building the network is the one complete check of its options
            create_model(model, num_classes=2, **options["model_kwargs"])
        except (TypeError, ValueError) as error:
            raise unprocessable(f"invalid model_kwargs for {model}: {error}") from None
    return options


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses=error_responses(401, 403, 413, 415, 422, 503),
    dependencies=[WriteAccess],
)
async def create_training_job(
    response: Response,
    settings: SettingsDep,
    jobs: JobsDep,
    submit: SubmitterDep,
    file: Annotated[
        UploadFile | None, File(description="a data set archive (.zip, .tar.gz): a folder per class")
    ] = None,
    data_path: Annotated[
        list[str] | None,
        Form(
            description="a data set folder or archive under the data root; repeat it (with an upload or "
            "not) to train on several at once, each split on its own, as NAME=PATH to name its source"
        ),
    ] = None,
    model: Annotated[str, Form(description=f"one of: {', '.join(list_models())}")] = "se_resnet50",
    name: Annotated[
        str | None, Form(description="model name to register the result under; default: model")
    ] = None,
    recipe: Annotated[str, Form(description=f"one of: {', '.join(RECIPES)}")] = "paper",
    epochs: Annotated[int | None, Form(ge=1, le=1000)] = None,
    batch_size: Annotated[int | None, Form(ge=1, le=4096)] = None,
    lr: Annotated[float | None, Form(gt=0, le=10)] = None,
    seed: Annotated[int | None, Form(ge=0)] = None,
    input_size: Annotated[int | None, Form(ge=8, le=1024)] = None,
    amp: Annotated[bool | None, Form(description="bf16 autocast on the CPU, mixed precision on CUDA")] = None,
    holdout: Annotated[
        list[str] | None,
        Form(description="sources never trained or selected on (tagged by a data set's manifest.csv)"),
    ] = None,
    class_balance: Annotated[
        float | None, Form(ge=0, le=1, description="sample by n_class**-x: 0 uniform, 1 balanced classes")
    ] = None,
    source_balance: Annotated[
        float | None, Form(ge=0, le=1, description="sample by n_source**-x: 0 uniform, 1 balanced sources")
    ] = None,
    model_kwargs: Annotated[
        str | None, Form(description='architecture options as JSON, e.g. {"width": 8}')
    ] = None,
    make_default: Annotated[bool, Form(description="serve the trained model once it is registered")] = False,
) -> JobPublic:
    """Train a model on a data set; 202 with the job to follow. The result becomes a new model version."""
    if model not in list_models():
        raise unprocessable(f"unknown model {model!r}; valid models: {', '.join(list_models())}")
    if recipe not in RECIPES:
        raise unprocessable(f"unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    data_paths = [path for path in data_path or [] if path]
    if file is None and not data_paths:
        raise unprocessable("give the data set as an uploaded archive ('file') and/or as 'data_path'")
    try:
        registered_name = validate_name(name or model)
    except ValueError as error:
        raise unprocessable(str(error)) from None
    options = await run_in_threadpool(
        training_options,
        model,
        model_kwargs,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        input_size=input_size,
        amp=amp,
        holdout_sources=tuple(holdout) if holdout else None,
        class_balance=class_balance,
        source_balance=source_balance,
    )
    job_id = new_job_id()
    folder = jobs.folder(job_id)
    folder.mkdir(parents=True)
    try:
        upload = None if file is None else (file.filename or "upload", file.file)
        data, source = await run_in_threadpool(store_training_data, upload, data_paths, folder, settings)
        try:
            make_config(recipe, data=data, out=str(folder / "run"), **options)
        except (TypeError, ValueError) as error:
            raise unprocessable(f"invalid training options: {error}") from None
    except BaseException:
        discard(folder)
        raise
    params = {
        "name": registered_name,
        "recipe": recipe,
        "options": options,
        "data": data,
        "source": source,
        "make_default": make_default,
    }
    job = await run_in_threadpool(enqueue, jobs, submit, "training", params, job_id)
    response.headers["Location"] = f"/train/{job.id}"
    return job_public(job)


@router.get("", response_model=list[JobPublic], dependencies=[ReadAccess])
def read_training_jobs(jobs: JobsDep) -> list[JobPublic]:
    """Every training job, oldest first."""
    return [
        job_public(job) for job in sorted(jobs.all(), key=lambda j: j.created_at) if job.kind == "training"
    ]


@router.get(
    "/{job_id}", response_model=JobPublic, responses=error_responses(401, 404), dependencies=[ReadAccess]
)
def read_training_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """State, epoch, progress, metrics so far, ETA and error of a training job."""
    return job_public(find_job(jobs, job_id, "training"))


@router.delete(
    "/{job_id}",
    response_model=JobPublic,
    responses=error_responses(401, 403, 404, 409),
    dependencies=[WriteAccess],
)
def cancel_training_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """Cancel a training job: a queued one never starts, a running one stops after its current step
    (its last epoch checkpoint stays on disk). 409 if the job has already finished."""
    job = find_job(jobs, job_id, "training")
    if job.finished:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has already {job.state}")
    return job_public(jobs.request_cancel(job_id))
