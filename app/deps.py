"""Dependencies shared by the routes, as Annotated aliases.

Each is ``async def``: none waits for anything, and FastAPI runs a plain ``def`` dependency on its
thread pool, a round trip through another thread for every dependency of every request (on /classify,
five of them cost more server CPU than preparing the photo: docs/PERFORMANCE.md, "The request path").
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.jobs import JobSubmitter
from app.metrics import Metrics
from app.security import API_KEY_HEADER, check_api_key
from app.serving import InferenceService
from core.jobs import JobStore
from core.model_store import ModelStore
from core.review import ReviewStore
from core.settings import ApiKey, Settings


async def settings_of_app(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


async def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


async def get_jobs(request: Request) -> JobStore:
    jobs: JobStore = request.app.state.jobs
    return jobs


async def get_submitter(request: Request) -> JobSubmitter:
    submitter: JobSubmitter = request.app.state.submitter
    return submitter


async def get_review_store(request: Request) -> ReviewStore:
    store: ReviewStore = request.app.state.review
    return store


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


@dataclass(frozen=True)
class Serving:
    """What the inference routes use, as one dependency: FastAPI inspects each dependency again on every
    request, CPU that the busiest routes spend on their event loop's one thread."""

    service: InferenceService
    settings: Settings
    metrics: Metrics
    review_store: ReviewStore


async def get_serving(request: Request) -> Serving:
    state = request.app.state
    return Serving(state.service, state.settings, state.metrics, state.review)


SettingsDep = Annotated[Settings, Depends(settings_of_app)]
ServingDep = Annotated[Serving, Depends(get_serving)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
ReviewStoreDep = Annotated[ReviewStore, Depends(get_review_store)]
SubmitterDep = Annotated[JobSubmitter, Depends(get_submitter)]
#: The key as an OpenAPI security scheme: Swagger UI's "Authorize" button sends it with every request.
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    description="one of the keys in TRASHCAM_API_KEYS; needed to change state, and to read with "
    "TRASHCAM_PROTECT_READS",
    auto_error=False,  # the check says why (401: missing or wrong; 403: none configured)
)
ApiKeyHeader = Annotated[str | None, Security(api_key_scheme)]


async def require_review_key(settings: SettingsDep, api_key: ApiKeyHeader = None) -> ApiKey:
    """For labelling the review queue: a key of the review role or above."""
    return check_api_key(settings, api_key, "review")


async def require_train_key(settings: SettingsDep, api_key: ApiKeyHeader = None) -> ApiKey:
    """For endpoints that start or stop jobs: a key of the train or admin role."""
    return check_api_key(settings, api_key, "train")


async def require_admin_key(settings: SettingsDep, api_key: ApiKeyHeader = None) -> ApiKey:
    """For endpoints that change which model serves, or delete one: an admin key."""
    return check_api_key(settings, api_key, "admin")


async def require_read_access(settings: SettingsDep, api_key: ApiKeyHeader = None) -> None:
    """Open unless ``protect_reads`` is set; then any key."""
    if settings.protect_reads:
        check_api_key(settings, api_key, "read")


ReviewAccess = Depends(require_review_key)
TrainAccess = Depends(require_train_key)
AdminAccess = Depends(require_admin_key)
ReadAccess = Depends(require_read_access)
#: The key a request came with, for the records that say who did what (jobs, promotions).
TrainerDep = Annotated[ApiKey, Depends(require_train_key)]
ReviewerDep = Annotated[ApiKey, Depends(require_review_key)]
AdminDep = Annotated[ApiKey, Depends(require_admin_key)]
