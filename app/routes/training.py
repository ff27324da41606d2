"""Training jobs: POST /train starts one, GET /train/{id} follows it, DELETE /train/{id} cancels it."""

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.deps import (
    JobsDep,
    ReadAccess,
    ServiceDep,
    SettingsDep,
    StoreDep,
    SubmitterDep,
    TrainAccess,
    TrainerDep,
)
from app.errors import error_responses, unprocessable
from app.jobs import discard, enqueue, refuse_unknown_holdout, store_training_data
from app.schemas import JobPublic
from app.serving import InferenceService
from app.uploads import refuse_repeated
from core.job_folder import JobFolder
from core.jobs import Job, JobKind, JobNotFoundError, JobStore, TrainingParams, new_job_id
from core.model_store import ModelStore
from core.retention import prune_job
from core.settings import PROJECT_ROOT, Settings
from models import list_models
from models.registry import validate_model_options
from models.store import ModelNotFoundError, validate_name
from training.config import RECIPES, TrainConfig, make_config
from training.distributed import World, rank_batch_size
from training.options import TrainingOptions
from training.replay import find_replay_data
from training.run_folder import MANIFEST_FILE
from training.transfer import base_options

router = APIRouter(prefix="/train", tags=["training"], responses=error_responses(400, 422))


def job_public(job: Job) -> JobPublic:
    return JobPublic(**{**job.model_dump(), "kind": job.kind, "params": job.params.public()})


def find_job(jobs: JobStore, job_id: str, kind: JobKind) -> Job:
    """The job, 404 when there is no such job of ``kind`` (409, through the app's handler, when a newer
    version wrote its record in a way this one cannot read)."""
    try:
        job = jobs.get(job_id)
    except JobNotFoundError:
        job = None
    if job is None or job.kind != kind:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {kind} job {job_id!r}")
    return job


#: ``base`` naming the model that serves now, whether it is registered, configured or shipped.
SERVING_BASE = "default"
#: The split of a review set: what few-photo fine-tunes were found to do best with (no test photos;
#: docs/RESULTS.md, "From the general default model, and a split that keeps more photos to train on").
REVIEW_SPLIT = (0.85, 0.15, 0.0)


def training_options(model: str | None, model_kwargs: str | None, given: TrainingOptions) -> dict[str, Any]:
    """The TrainConfig overrides of a request; 422 for options the network does not take. With no
    ``model`` the base model's architecture decides, and its own options are checked against it."""
    options = given.overrides()
    if model is not None:
        options["model"] = model
    if model_kwargs:
        try:
            options["model_kwargs"] = dict(json.loads(model_kwargs))
        except (ValueError, TypeError) as error:
            raise unprocessable(f"model_kwargs must be a JSON object: {error}") from None
        try:  # checked against the options the architecture declares, without building it
            if model is not None:
                options["model_kwargs"] = validate_model_options(model, options["model_kwargs"])
        except ValueError as error:
            raise unprocessable(f"model_kwargs: {error}") from None
    return options


def checked_name(name: str) -> str:
    try:
        return validate_name(name)
    except ValueError as error:
        raise unprocessable(f"{error}; give the model a 'name'") from None


def replay_folders(settings: Settings) -> list[Path]:
    """Where a base model's training data sets are looked for, by file name: the data root, then the
    data sets that ship with the service."""
    return [settings.resolved_data_root, PROJECT_ROOT / "data"]


def resolve_base(
    base: str,
    version: str | None,
    store: ModelStore,
    service: InferenceService,
    options: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    """``options`` with the base model's weights to start from, its lineage and the architecture,
    input size and normalisation it fixes, and its training photos to replay where the server has them
    (its manifest beside its weights, its data sets in :func:`replay_folders`); 422 when there is no
    such model or the options clash."""
    if base == SERVING_BASE:
        if version is not None:
            raise unprocessable("base 'default' is the model serving now: give no base_version")
        predictor = service.manager.predictor  # NoModelError (503) when none serves
        spec, sha256, ref = predictor.spec, predictor.sha256, f"{predictor.name}:{predictor.version}"
        path = predictor.path
    else:
        try:
            chosen = store.get(base, version)
        except ModelNotFoundError as error:
            raise unprocessable(f"base: {error}") from None
        spec, sha256, ref, path = chosen.spec, chosen.sha256, chosen.ref, str(chosen.path)
    if path is None:
        raise unprocessable(f"base: the weights of {ref} are not on disk")
    try:
        fixed = base_options(
            spec,
            model=options.get("model"),
            model_kwargs=options.get("model_kwargs"),
            input_size=options.get("input_size"),
        )
    except ValueError as error:
        raise unprocessable(f"base {ref}: {error}") from None
    resolved = {**options, **fixed, "init_from": path, "init_sha256": sha256, "base": ref}
    manifest = Path(path).parent / MANIFEST_FILE
    found = find_replay_data(manifest, replay_folders(settings))
    if found is not None:
        resolved.update(replay_manifest=str(manifest), replay_data=found)
    return resolved


def refuse_process_count(processes: int, batch_size: int, most: int) -> None:
    """422 for more processes than the service allows, or a batch that does not split over them."""
    if processes > most:
        raise unprocessable(f"processes: at most {most} on this service (TRASHCAM_MAX_TRAINING_PROCESSES)")
    try:
        rank_batch_size(batch_size, World(size=processes))
    except ValueError as error:
        raise unprocessable(str(error)) from None


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses=error_responses(401, 403, 413, 415, 422, 429, 503, 507),
)
async def create_training_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    jobs: JobsDep,
    submit: SubmitterDep,
    store: StoreDep,
    service: ServiceDep,
    caller: TrainerDep,
    # In the order people fill them in: the data, what to start from, what to call it; knobs after.
    *,
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
    base: Annotated[
        str | None,
        Form(
            description="fine-tune this registered model (or 'default': the one serving now): its "
            "architecture and weights, the classifier rows of classes it shares kept by name"
        ),
    ] = None,
    base_version: Annotated[str | None, Form(description="a version of base; the newest if omitted")] = None,
    name: Annotated[
        str | None, Form(description="model name to register the result under; default: model")
    ] = None,
    recipe: Annotated[
        str | None,
        Form(
            description=f"one of: {', '.join(RECIPES)}; default paper, or finetune with a base",
            json_schema_extra={"enum": list(RECIPES)},
        ),
    ] = None,
    make_default: Annotated[bool, Form(description="serve the trained model once it is registered")] = False,
    processes: Annotated[
        int,
        Form(
            ge=1,
            le=64,
            description="processes the worker trains in (DDP under torchrun on its host: a GPU each where "
            "it has GPUs, else a share of its cores); the batch is split over them, so batch_size must "
            "be a multiple; at most the service's TRASHCAM_MAX_TRAINING_PROCESSES",
        ),
    ] = 1,
    model: Annotated[
        str | None,
        Form(
            description=f"one of: {', '.join(list_models())}; default se_resnet50, or the base's",
            json_schema_extra={"enum": list_models()},
        ),
    ] = None,
    model_kwargs: Annotated[
        str | None, Form(description='architecture options as JSON, e.g. {"width": 8}')
    ] = None,
    # Every option of the training config, after the fields people set first.
    given: Annotated[TrainingOptions, Form()],
) -> JobPublic:
    """Train a model on a data set; 202 with the job to follow. The result becomes a new model version."""
    await refuse_repeated(request, "file", "name", "base", "base_version", "recipe", "model")
    if model is not None and model not in list_models():
        raise unprocessable(f"unknown model {model!r}; valid models: {', '.join(list_models())}")
    recipe = recipe or ("finetune" if base else TrainConfig.model_fields["recipe"].default)
    if recipe not in RECIPES:
        raise unprocessable(f"unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    data_paths = [path for path in data_path or [] if path]
    if file is None and not data_paths:
        raise unprocessable("give the data set as an uploaded archive ('file') and/or as 'data_path'")
    if name is not None:
        name = checked_name(name)
    options = await run_in_threadpool(
        training_options, model or (None if base else "se_resnet50"), model_kwargs, given
    )
    if base:
        options = await run_in_threadpool(
            resolve_base, base, base_version or None, store, service, options, settings
        )
    # A fine-tuned model becomes a new version of its base, unless it is given a name of its own.
    registered_name = name or checked_name(str(options.get("base", "")).split(":")[0] or options["model"])
    job_id = new_job_id()
    folder = jobs.folder(job_id)
    folder.mkdir(parents=True)
    try:
        upload = None if file is None else (file.filename or "upload", file.file)
        stored = await run_in_threadpool(store_training_data, upload, data_paths, folder, settings)
        data, source = stored.data, stored.description
        if stored.review_sets:
            # The model records which labels it learned from. What people labelled is a few photos per
            # class: trained on alone, it is split as few-photo runs are (no test photos) unless the
            # request says otherwise.
            options["review_sets"] = stored.review_sets
            data_sets = 1 if isinstance(stored.data, str) else len(stored.data)
            if len(stored.review_sets) == data_sets:
                options.setdefault("split", REVIEW_SPLIT)
        try:
            config = make_config(recipe, data=data, out=str(JobFolder(folder).run.path), **options)
        except ValueError as error:
            raise unprocessable(str(error)) from None
        await run_in_threadpool(refuse_unknown_holdout, config.data, config.holdout_sources)
        refuse_process_count(processes, config.batch_size, settings.max_training_processes)
    except BaseException:
        discard(folder)
        raise
    params = TrainingParams(
        name=registered_name, config=config, source=source, make_default=make_default, processes=processes
    )
    job = await run_in_threadpool(enqueue, jobs, submit, params, job_id, settings, caller.name)
    response.headers["Location"] = f"/train/{job.id}"
    return job_public(job)


#: The most jobs one page of ``GET /train`` lists, and the most it may skip (SQLite's integers are 64-bit).
MAX_PAGE = 500
MAX_OFFSET = 2**31


@router.get("", response_model=list[JobPublic], dependencies=[ReadAccess])
def read_training_jobs(
    request: Request,
    response: Response,
    jobs: JobsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="jobs on this page")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="jobs skipped before this page")] = 0,
    order: Annotated[
        Literal["oldest", "newest"], Query(description="by submission time: oldest or newest first")
    ] = "oldest",
) -> list[JobPublic]:
    """Training jobs, a page at a time. ``X-Total-Count`` says how many there are, and ``Link`` gives
    the next page's address while there is one."""
    page, total = jobs.page("training", limit=limit, offset=offset, order=order)
    response.headers["X-Total-Count"] = str(total)
    if offset + limit < total:
        following = request.url.include_query_params(limit=limit, offset=offset + limit, order=order)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return [job_public(job) for job in page]


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
    dependencies=[TrainAccess],
)
def cancel_training_job(
    job_id: str,
    jobs: JobsDep,
    purge: Annotated[
        bool,
        Query(
            description="remove a finished job's upload, extracted data and checkpoints now instead of "
            "after the retention time (its record, history and report stay; a registered model lives "
            "in the model store, not here)"
        ),
    ] = False,
) -> JobPublic:
    """Cancel a training job: a queued one never starts, a running one stops after its current step
    (its last epoch checkpoint stays on disk). With ``purge=true``, free a finished job's files. 409 if
    the job has already finished (without purge), or has not (with it: cancel it first)."""
    job = find_job(jobs, job_id, "training")
    if purge:
        if not job.finished:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"job {job_id} is {job.state}: cancel it first, then purge it"
            )
        prune_job(jobs, job)
        job.pruned_at = job.pruned_at or time.time()
        jobs.save(job)
        return job_public(job)
    if job.finished:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} has already {job.state} (purge=true removes its files)",
        )
    return job_public(jobs.request_cancel(job_id))
