"""The FastAPI application: ``create_app()`` wires settings, the serving model and the routes."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batching import QueueFullError
from app.errors import database_down
from app.jobs import JobSubmitter
from app.lanes import plan_lanes
from app.limits import RequestGate
from app.metrics import Metrics, MetricsMiddleware
from app.openapi import DocumentedAPI, operation_id
from app.routes import batches, classify, explain, health, review, similar, training, ui
from app.routes import models as models_routes
from app.routes.docs import add_docs
from app.serving import (
    EXPENSIVE_RETRY_AFTER_S,
    ExpensiveBusyError,
    ExpensiveRefusedError,
    InferenceService,
)
from core.database import unavailable as database_unavailable
from core.jobs import JobStore, NewerRecordError
from core.model_manager import ModelManager, NoModelError, model_store
from core.queue import create_celery, submit
from core.recovery import recover_orphans
from core.redaction import path_labels
from core.retention import prune_finished_jobs
from core.review import ReviewStore
from core.settings import Settings, get_settings
from models.files import redact_paths
from models.predictor import select_device

logger = logging.getLogger(__name__)

MODEL_REFRESH_SECONDS = 2.0


async def follow_default_model(app: FastAPI) -> None:
    """Pick up a new default model registered by another process (a finished training job)."""
    manager: ModelManager = app.state.service.manager
    metrics: Metrics = app.state.metrics
    while True:
        await asyncio.sleep(MODEL_REFRESH_SECONDS)
        try:
            if await run_in_threadpool(manager.refresh):
                metrics.model_loads.inc()
        except Exception:
            logger.exception("could not load the new default model; still serving the previous one")


async def recover_lost_jobs(app: FastAPI) -> None:
    """Resubmit jobs whose worker died or whose queue message a Redis restart lost, and free the disk
    of jobs that finished, and of review items stored, longer ago than their retention times."""
    settings: Settings = app.state.settings
    while True:
        try:
            await run_in_threadpool(recover_orphans, app.state.jobs, app.state.submitter)
            retention = settings.job_retention_days * 86400
            await run_in_threadpool(prune_finished_jobs, app.state.jobs, retention_seconds=retention)
            await run_in_threadpool(app.state.review.prune, settings.review_retention_days * 86400)
        except Exception:
            logger.exception("job recovery or cleanup failed; will retry")
        await asyncio.sleep(settings.job_recovery_interval_seconds)


def celery_submitter(settings: Settings) -> JobSubmitter:
    celery = create_celery(settings)
    return lambda job: submit(celery, job)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    lanes = plan_lanes(
        select_device(settings.device), lanes=settings.inference_lanes, threads=settings.inference_threads
    )
    # A compiled runtime runs a request per lane at once, on as many threads each as torch would.
    manager = ModelManager.from_settings(
        settings, app.state.store, streams=lanes.lanes, threads=lanes.threads
    )
    # Made before the model loads: the lanes set the thread count that the loading and the requests'
    # threads start with, and give the process its own back when the service stops.
    service = InferenceService(
        manager,
        max_batch_size=settings.batch_max_size,
        max_wait_s=settings.batch_max_wait_ms / 1000.0,
        max_pending=settings.batch_max_pending,
        lanes=lanes,
        on_batch=app.state.metrics.observe_batch,
        max_expensive=settings.max_expensive_explanations,
    )
    app.state.metrics.watch_lane_cpu(lambda: service.lanes.cpu_seconds)
    await run_in_threadpool(manager.load_initial)
    if manager.loaded:
        app.state.metrics.model_loads.inc()
    app.state.service = service
    service.start()
    background = [
        asyncio.create_task(follow_default_model(app)),
        asyncio.create_task(recover_lost_jobs(app)),
    ]
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await service.stop()


def validation_message(error: RequestValidationError) -> str:
    """``"form.epochs: Input should be less than or equal to 1000; ..."``: every field at fault."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "request"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(problems)


def create_app(settings: Settings | None = None, *, submitter: JobSubmitter | None = None) -> FastAPI:
    """The application; ``submitter`` queues jobs (Celery by default, a fake in unit tests)."""
    app = DocumentedAPI(
        # The documentation pages are the service's own, with their assets served locally (add_docs).
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
        title="trashcam",
        summary="Explainable waste-image recognition: material classes with Grad-CAM heatmaps.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.store = model_store(app.state.settings)
    app.state.metrics = Metrics(app.state.settings.drift_window_seconds)
    app.state.review = ReviewStore(app.state.settings.review_dir)
    app.state.jobs = JobStore.from_settings(app.state.settings)
    app.state.submitter = submitter or celery_submitter(app.state.settings)

    @app.exception_handler(NoModelError)
    @app.exception_handler(ExpensiveBusyError)
    async def expensive_busy(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(error)},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(EXPENSIVE_RETRY_AFTER_S)},
        )

    @app.exception_handler(ExpensiveRefusedError)
    async def expensive_refused(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(QueueFullError)
    async def unavailable(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(error)},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(NewerRecordError)
    async def newer_record(request: Request, error: Exception) -> JSONResponse:
        """A job record of a newer version of the service (a rolling deploy under way): this replica
        must not rewrite it; an upgraded one can."""
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, error: Exception) -> JSONResponse:
        """The database down or restarting: 503, try again shortly; nothing was written. Any other
        database error is the service's fault: 500."""
        if database_unavailable(error):
            logger.warning("the database cannot be reached: %s", error)
            down = database_down()
            return JSONResponse({"detail": down.detail}, status_code=down.status_code, headers=down.headers)
        logger.error("database error", exc_info=error)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    labels = path_labels(app.state.settings)

    @app.exception_handler(StarletteHTTPException)
    async def without_server_paths(request: Request, error: StarletteHTTPException) -> Response:
        """Every error as FastAPI answers it, with the server's folders out of its message."""
        if isinstance(error.detail, str):
            error = StarletteHTTPException(
                error.status_code, redact_paths(error.detail, labels), error.headers
            )
        return await http_exception_handler(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        """FastAPI's own validation errors in the one error schema: ``detail`` is one string that names
        each field at fault and why."""
        return JSONResponse(
            {"detail": validation_message(error)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
        )

    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Outermost: a key and the body's size are checked before anything reads the body.
    app.add_middleware(RequestGate, settings=app.state.settings)
    for router in (
        classify.router,
        batches.router,
        explain.router,
        similar.router,
        training.router,
        models_routes.router,
        review.router,
        health.router,
        ui.router,
    ):
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="static")
    add_docs(app)
    return app
