import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.deps import MetricsDep, ServiceDep, SettingsDep
from app.routes.inference_views import model_ref
from app.schemas import HealthPublic, ReadyPublic

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


@router.get("/ready", response_model=ReadyPublic, responses={503: {"model": ReadyPublic}})
async def read_ready(service: ServiceDep, settings: SettingsDep, response: Response) -> ReadyPublic:
    """Readiness: a model is loaded and Redis (the job queue) answers. 503 otherwise."""
    redis_ok = await run_in_threadpool(redis_reachable, settings.redis_url)
    loaded = service.manager.loaded
    problems = [p for p, ok in (("no model loaded", loaded), ("redis unreachable", redis_ok)) if not ok]
    if problems:
        response.status_code = 503
    return ReadyPublic(
        ready=not problems,
        model=model_ref(service.manager.predictor) if loaded else None,
        redis=redis_ok,
        detail="; ".join(problems) or None,
    )


@router.get("/metrics", response_class=Response)
def read_metrics(metrics: MetricsDep, service: ServiceDep) -> Response:
    """Prometheus metrics."""
    metrics.model_loaded.set(1 if service.manager.loaded else 0)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
