"""Prometheus metrics for the API, in a registry of the app's own (so several apps can coexist)."""

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.drift import RecentAnswers, RecentAnswersCollector
from models.calibration import UNSURE_REASONS

#: The window of the recent unsure shares, by default an hour.
DEFAULT_DRIFT_WINDOW_SECONDS = 3600.0


class Metrics:
    def __init__(self, drift_window_seconds: float = DEFAULT_DRIFT_WINDOW_SECONDS) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "trashcam_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "trashcam_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "trashcam_inference_batch_size",
            "images per inference batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "trashcam_inference_batch_seconds", "model time per inference batch", registry=self.registry
        )
        self.model_loaded = Gauge("trashcam_model_loaded", "1 if a model is serving", registry=self.registry)
        self.model_loads = Counter(
            "trashcam_model_loads", "models loaded or swapped in", registry=self.registry
        )
        self.queue_depth = Gauge(
            "trashcam_queue_depth", "messages waiting in a Celery queue", ["queue"], registry=self.registry
        )
        self.jobs = Gauge(
            "trashcam_jobs", "jobs by kind and state", ["kind", "state"], registry=self.registry
        )
        # What the service answers: an operator alerts on a camera whose photos drift from what the
        # model knows (a rising share of "unlike the training photos").
        self.answers = Counter(
            "trashcam_answers", "photos answered, by predicted class", ["label"], registry=self.registry
        )
        self.unsure_answers = Counter(
            "trashcam_unsure_answers",
            "photos answered as unsure, by reason (a photo may have both)",
            ["reason"],
            registry=self.registry,
        )
        self.energy = Histogram(
            "trashcam_answer_energy",
            "energy score of each photo answered (-logsumexp of the logits; higher: less like the "
            "training photos)",
            buckets=(-30, -20, -15, -12, -10, -8, -6, -4, -2, 0, 2),
            registry=self.registry,
        )
        self.distance = Histogram(
            "trashcam_answer_distance",
            "feature distance of each photo answered to the training photos (cosine distance to the "
            "k-th nearest; higher: less like them), where the model has a feature bank",
            buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
            registry=self.registry,
        )
        self.recent = RecentAnswers(drift_window_seconds, UNSURE_REASONS)
        self.registry.register(RecentAnswersCollector(self.recent))
        self._lane_cpu = _LaneCpuCollector(lambda: 0.0)
        self.registry.register(self._lane_cpu)
        self.serving_model = Info(
            "trashcam_serving_model", "the model that answers by default", registry=self.registry
        )

    def watch_lane_cpu(self, cpu_seconds: Callable[[], float]) -> None:
        """Expose the inference lanes' CPU seconds (``app.lanes.InferenceLanes.cpu_seconds``), to set beside
        the process's own CPU."""
        self._lane_cpu.cpu_seconds = cpu_seconds

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_answer(
        self, label: str, unsure_reasons: list[str], energy: float, distance: float | None = None
    ) -> None:
        self.answers.labels(label).inc()
        for reason in unsure_reasons:
            self.unsure_answers.labels(reason).inc()
        self.energy.observe(energy)
        if distance is not None:
            self.distance.observe(distance)
        self.recent.add(unsure_reasons)


class _LaneCpuCollector(Collector):
    def __init__(self, cpu_seconds: Callable[[], float]) -> None:
        self.cpu_seconds = cpu_seconds

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily(
            "trashcam_inference_lane_cpu_seconds",
            "CPU seconds the inference lanes' own threads spent running batches (stacking, torch's forward "
            "passes, scoring); not counted: a compiled runtime's threads, and torch's worker threads where "
            "a lane has several",
            value=self.cpu_seconds(),
        )


class MetricsMiddleware:
    """Counts every HTTP request and times it, per route template and status.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs each
    request through an extra task and memory streams, CPU that a busy inference server has no spare of.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            # The router records the matched route in the scope; its template keeps the labels few. A
            # mounted app (the pages' and the docs' static files) is labelled by where it is mounted.
            route = scope.get("route")
            path = route.path if route is not None else scope.get("root_path") or "unmatched"
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - started)
