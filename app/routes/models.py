from fastapi import APIRouter, HTTPException, Response, status
from starlette.concurrency import run_in_threadpool

from app.deps import AdminAccess, AdminDep, ReadAccess, ServiceDep, SettingsDep, StoreDep
from app.errors import error_responses
from app.routes.inference_views import model_ref
from app.schemas import DefaultModelUpdate, ModelPublic, ModelRef, ModelsPublic, PromotionPublic
from core.model_manager import NothingToRollBackError
from core.redaction import path_labels
from core.settings import Settings
from models.checkpoint import CheckpointError
from models.files import redact
from models.store import (
    BUILTIN_VERSION,
    DefaultChangedError,
    ModelInUseError,
    ModelNotFoundError,
    ModelVersion,
)

router = APIRouter(prefix="/models", tags=["models"], responses=error_responses(422))


def model_public(version: ModelVersion, serving: ModelRef | None, settings: Settings) -> ModelPublic:
    spec = version.spec
    return ModelPublic(
        name=version.name,
        version=version.version,
        default=serving is not None and (serving.name, serving.version) == (version.name, version.version),
        arch=spec.arch,
        classes=list(spec.class_names),
        input_size=spec.input_size,
        metrics=spec.metrics,
        # The recipe names its data sets; the server's folders stay out of what anyone may read.
        recipe=redact(spec.recipe, path_labels(settings)),
        calibration=spec.calibration,
        created_at=spec.created_at,
        sha256=version.sha256,
        builtin=version.version == BUILTIN_VERSION,
    )


def serving_ref(service: ServiceDep) -> ModelRef | None:
    return model_ref(service.manager.predictor) if service.manager.loaded else None


@router.get("", response_model=ModelsPublic, dependencies=[ReadAccess])
def read_models(service: ServiceDep, store: StoreDep, settings: SettingsDep) -> ModelsPublic:
    """Every stored model version, and which one is serving."""
    serving = serving_ref(service)
    return ModelsPublic(
        serving=serving, models=[model_public(v, serving, settings) for v in store.all_versions()]
    )


@router.get(
    "/default",
    response_model=ModelPublic,
    responses=error_responses(401, 404, 503),
    dependencies=[ReadAccess],
)
def read_default_model(service: ServiceDep, store: StoreDep, settings: SettingsDep) -> ModelPublic:
    """The version that is serving; 404 when what serves is not a stored version (a checkpoint configured
    by TRASHCAM_MODEL_PATH: see GET /models for its name and version)."""
    serving = model_ref(service.manager.predictor)
    for version in store.versions(serving.name):
        if version.version == serving.version:
            return model_public(version, serving, settings)
    raise HTTPException(
        status.HTTP_404_NOT_FOUND,
        f"the serving model {serving.name}:{serving.version} is not a stored version "
        "(it is the configured checkpoint, TRASHCAM_MODEL_PATH)",
    )


@router.get("/default/history", response_model=list[PromotionPublic], dependencies=[ReadAccess])
def read_promotions(store: StoreDep) -> list[PromotionPublic]:
    """Every change of the model that serves, oldest first: when, by whom, from what, to what."""
    return [PromotionPublic.model_validate(entry) for entry in store.promotions()]


@router.get(
    "/{name}",
    response_model=list[ModelPublic],
    responses=error_responses(401, 404),
    dependencies=[ReadAccess],
)
def read_model(name: str, service: ServiceDep, store: StoreDep, settings: SettingsDep) -> list[ModelPublic]:
    """The versions of one model, oldest first."""
    versions = store.versions(name)
    if not versions:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no model named {name!r}; known: {', '.join(store.names())}"
        )
    serving = serving_ref(service)
    return [model_public(v, serving, settings) for v in versions]


@router.put(
    "/default",
    response_model=ModelPublic,
    # 400: a body that is not JSON at all is answered before validation.
    responses=error_responses(400, 401, 403, 404, 409),
)
async def update_default_model(
    update: DefaultModelUpdate, service: ServiceDep, settings: SettingsDep, caller: AdminDep
) -> ModelPublic:
    """Serve another stored version (the shipped one is ``NAME:builtin``). It is loaded first; requests
    in flight finish on the old one. The promotion is recorded (GET /models/default/history)."""
    try:
        chosen = await run_in_threadpool(service.manager.switch, update.name, update.version, by=caller.name)
    except ModelNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except CheckpointError as error:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{update.name}: the stored checkpoint cannot be served: {error}"
        ) from None
    return model_public(chosen, serving_ref(service), settings)


@router.post(
    "/default/rollback",
    response_model=ModelPublic,
    responses=error_responses(401, 403, 409),
)
async def rollback_default_model(service: ServiceDep, settings: SettingsDep, caller: AdminDep) -> ModelPublic:
    """Serve what served before the last promotion; a second rollback undoes the first. 409 when no
    promotion is on record or what served before has been deleted since."""
    try:
        chosen = await run_in_threadpool(service.manager.rollback, by=caller.name)
    except (NothingToRollBackError, ModelNotFoundError, CheckpointError, DefaultChangedError) as error:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot roll back: {error}") from None
    return model_public(chosen, serving_ref(service), settings)


@router.delete(
    "/{name}/{version}",
    status_code=204,
    responses=error_responses(401, 403, 404, 409),
    dependencies=[AdminAccess],
)
def delete_model_version(name: str, version: str, service: ServiceDep) -> Response:
    """Delete a stored version, its weights and report. 409 for the built-in model, the default, and the
    version serving now."""
    try:
        service.manager.delete(name, version)
    except ModelNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except ModelInUseError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    return Response(status_code=204)
