import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.deps import JobsDep, MetricsDep, ServiceDep, SettingsDep
from app.schemas import HealthPublic, ReadyPublic, ServingModel
from core.heartbeat import live_workers
from core.jobs import JOB_KINDS, JOB_STATES
from core.queue import queue_of
from models.predictor import Predictor

router = APIRouter(tags=["health"])


def redis_reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@router.get("/health", response_model=HealthPublic)
def read_health() -> HealthPublic:
    """Liveness: the process answers."""
    return HealthPublic(status="ok")


def serving_model(predictor: Predictor) -> ServingModel:
    return ServingModel(name=predictor.name, version=predictor.version, sha256=predictor.sha256)


#: What /ready answers while Redis is down.
NOT_READY_EXAMPLE = {
    "ready": False,
    "model": {
        "name": "se_resnet50",
        "version": "builtin",
        "sha256": "80757b6a53bd029cbee1db224ee18a980d9316d70b0a463ca787d8b90850ea61",
    },
    "model_source": "the shipped model se_resnet50:builtin: no default is set",
    "redis": False,
    "workers": {"training": 1, "heatmaps": 1},
    "device": "cpu",
    "precision": "bf16+channels_last",
    "backend": "openvino",
    "lanes": "2 lanes x 1 thread",
    "detail": "redis unreachable",
}


@router.get(
    "/ready",
    response_model=ReadyPublic,
    responses={503: {"model": ReadyPublic, "content": {"application/json": {"example": NOT_READY_EXAMPLE}}}},
)
async def read_ready(service: ServiceDep, settings: SettingsDep, response: Response) -> ReadyPublic:
    """Readiness: a model is loaded, Redis (the job queue) answers and each queue has a live worker (its
    heartbeat key in Redis is set). 503 otherwise."""
    redis_ok = await run_in_threadpool(redis_reachable, settings.redis_url)
    loaded = service.manager.loaded
    queues = [queue_of(kind, settings) for kind in JOB_KINDS]
    workers = {queue: len(await run_in_threadpool(live_workers, settings, queue)) for queue in queues}
    problems = [p for p, ok in (("no model loaded", loaded), ("redis unreachable", redis_ok)) if not ok]
    if redis_ok:  # else the workers' heartbeats cannot be read: Redis is what is wrong
        problems += [f"no live worker on the {queue} queue" for queue, count in workers.items() if not count]
    if problems:
        response.status_code = 503
    return ReadyPublic(
        ready=not problems,
        model=serving_model(service.manager.predictor) if loaded else None,
        model_source=service.manager.source,
        redis=redis_ok,
        workers=workers,
        device=str(service.manager.device),
        precision=service.manager.predictor.served_precision if loaded else service.manager.precision.name,
        # Before a model loads, what was asked for; after, what runs it.
        backend=service.manager.predictor.backend if loaded else settings.inference_backend,
        lanes=service.lanes.plan.name,
        # What was skipped at start-up is said even when an older version serves in its place.
        detail="; ".join(problems + service.manager.load_errors) or None,
    )


def queue_depths(url: str, queues: tuple[str, ...]) -> dict[str, int]:
    """Messages waiting per Celery queue (a Redis list per queue); empty if Redis is unreachable."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return {queue: int(client.llen(queue)) for queue in queues}
        finally:
            client.close()
    except redis.RedisError:
        return {}


@router.get(
    "/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}}
)
def read_metrics(metrics: MetricsDep, service: ServiceDep, settings: SettingsDep, jobs: JobsDep) -> Response:
    """Prometheus metrics: requests and latencies per route, batches, model loads, queues and jobs."""
    metrics.model_loaded.set(1 if service.manager.loaded else 0)
    if service.manager.loaded:
        serving = service.manager.predictor
        metrics.serving_model.info(
            {"name": serving.name, "version": serving.version, "sha256": serving.sha256}
        )
    for queue, depth in queue_depths(
        settings.redis_url, tuple(queue_of(kind, settings) for kind in JOB_KINDS)
    ).items():
        metrics.queue_depth.labels(queue).set(depth)
    counts = jobs.counts()
    for kind in JOB_KINDS:
        for state in JOB_STATES:
            metrics.jobs.labels(kind, state).set(counts.get((kind, state), 0))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
