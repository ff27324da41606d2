import time
from collections.abc import Iterator

import pytest
import redis
import torch
from fastapi.testclient import TestClient

from app.lanes import plan_lanes
from core.heartbeat import KEY_PREFIX, heartbeat_key
from core.settings import Settings
from models.checkpoint import load_checkpoint
from models.precision import choose_precision
from tests.app.conftest import png_bytes


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


@pytest.fixture(autouse=True)
def no_workers(settings: Settings) -> Iterator[None]:
    """No worker's key but the test's own (other tests' workers beat in the same Redis database)."""

    url = settings.redis_url  # a test may point the app's settings elsewhere

    def clear() -> None:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match=f"{KEY_PREFIX}*"):
            client.delete(key)

    clear()
    yield
    clear()


def beat(settings: Settings, node: str, *, expires_s: float = 60.0) -> None:
    """A worker's heartbeat key, living ``expires_s`` more seconds."""
    redis.Redis.from_url(settings.redis_url).set(heartbeat_key(node), "alive", px=int(expires_s * 1000))


def test_ready_when_model_loaded_and_redis_answers(client: TestClient, settings: Settings) -> None:
    beat(settings, "training@host-a")
    beat(settings, "heatmaps@host-a")
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "model": response.json()["model"],
        "model_source": "the configured model: TRASHCAM_MODEL_PATH, no default is set",
        "redis": True,
        "workers": {"training": 1, "heatmaps": 1},
        "device": "cpu",
        # The tests' CPU decides between fp32 and bf16; the layout is channels-last either way.
        "precision": choose_precision(torch.device("cpu")).name,
        # The tests' tiny simple CNN has no pooled linear head: OpenVINO is not tried, torch runs it.
        "backend": "torch",
        # One lane per core, as many as the tests' machine has (at most four).
        "lanes": plan_lanes(torch.device("cpu")).name,
        "detail": None,
    }
    assert response.json()["precision"].endswith("+channels_last")
    # Which weights serve, so that replicas behind one address can be told apart.
    assert settings.model_path is not None
    checkpoint = load_checkpoint(settings.model_path)
    assert response.json()["model"] == {
        "name": settings.model_path.stem,
        "version": checkpoint.sha256[:12],
        "sha256": checkpoint.sha256,
    }


def test_ready_is_503_when_redis_is_unreachable(client: TestClient, settings: Settings) -> None:
    beat(settings, "training@host-a")
    beat(settings, "heatmaps@host-a")
    client.app.state.settings.redis_url = "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["detail"] == "redis unreachable"


def test_ready_is_503_while_a_queue_has_no_live_worker(client: TestClient, settings: Settings) -> None:
    beat(settings, "training@host-a")
    beat(settings, "training@host-b")
    beat(settings, "heatmaps@host-a", expires_s=0.2)  # its worker killed: it stops beating
    time.sleep(0.3)
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["workers"] == {"training": 2, "heatmaps": 0}
    assert response.json()["detail"] == "no live worker on the heatmaps queue"
    beat(settings, "heatmaps@host-a")
    assert client.get("/ready").status_code == 200


def test_metrics_count_requests_per_route_and_batches(client: TestClient) -> None:
    client.post("/classify", files={"file": ("p.png", png_bytes(), "image/png")})
    client.post("/classify", files={"file": ("p.txt", b"nope", "text/plain")})
    text = client.get("/metrics").text
    assert 'trashcam_http_requests_total{method="POST",route="/classify",status="200"} 1.0' in text
    assert 'trashcam_http_requests_total{method="POST",route="/classify",status="415"} 1.0' in text
    assert 'trashcam_http_request_seconds_count{method="POST",route="/classify"} 2.0' in text
    assert "trashcam_inference_batch_size_count 1.0" in text
    assert "trashcam_model_loaded 1.0" in text
    lane_cpu = [
        line for line in text.splitlines() if line.startswith("trashcam_inference_lane_cpu_seconds_total ")
    ]
    assert len(lane_cpu) == 1
    assert float(lane_cpu[0].split()[1]) > 0, "the batch's CPU is counted"


def test_the_app_gives_the_process_its_thread_count_back(settings: Settings) -> None:
    """The lanes' thread count is the process's while the app runs; threads started after it stops
    get torch's count from before (a training run in the same process must not run on one thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from app.main import create_app

    def new_thread_count() -> int:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(torch.get_num_threads).result()

    lanes = plan_lanes(torch.device("cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(lanes.threads + 1)  # a count that differs from the lanes' one
    try:
        with TestClient(create_app(settings, submitter=lambda job: None)):
            assert new_thread_count() == lanes.threads
        assert new_thread_count() == lanes.threads + 1
    finally:
        torch.set_num_threads(before)
