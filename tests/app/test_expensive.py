"""Explanations of a forward pass per channel (Score-CAM) hold a lane for a minute a photo on a CPU: a few
slots, never every lane, 503 with Retry-After past them, and none at all on a single lane."""

from fastapi.testclient import TestClient

from app.lanes import LanePlan
from app.main import create_app
from app.serving import EXPENSIVE_RETRY_AFTER_S, expensive_slots
from core.settings import Settings
from tests.app.conftest import png_bytes


def explain(client: TestClient, method: str) -> tuple[int, dict[str, str], dict[str, object]]:
    response = client.post(
        "/explain", files={"file": ("p.png", png_bytes(), "image/png")}, data={"method": method}
    )
    return response.status_code, dict(response.headers), response.json()


def test_expensive_explanations_leave_a_lane_to_the_others() -> None:
    assert expensive_slots(LanePlan(lanes=2, threads=1), "cpu", 1) == 1
    assert expensive_slots(LanePlan(lanes=4, threads=1), "cpu", 8) == 3
    assert expensive_slots(LanePlan(lanes=1, threads=2), "cpu", 1) == 0
    # A GPU's kernels queue on one device anyway; a Score-CAM there takes seconds, not a minute.
    assert expensive_slots(LanePlan(lanes=1, threads=2), "cuda", 1) == 1


def test_past_its_slots_an_expensive_explanation_is_503_and_the_others_still_run(settings: Settings) -> None:
    settings.inference_lanes = 2
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        assert service.expensive_slots == 1
        status, _, body = explain(client, "scorecam")
        assert status == 200, body
        assert service.expensive_running == 0  # its slot is given back
        service.expensive_running = 1  # one runs
        status, headers, body = explain(client, "scorecam")
        assert status == 503
        assert headers["retry-after"] == str(EXPENSIVE_RETRY_AFTER_S)
        assert "scorecam" in str(body["detail"])
        assert "/explain/batch" in str(body["detail"])
        assert explain(client, "gradcam")[0] == 200
        classified = client.post("/classify", files={"file": ("p.png", png_bytes(), "image/png")})
        assert classified.status_code == 200


def test_on_a_single_lane_an_expensive_explanation_is_refused_for_the_batch_route(settings: Settings) -> None:
    settings.inference_lanes = 1
    with TestClient(create_app(settings)) as client:
        status, _, body = explain(client, "scorecam")
        assert status == 422
        assert "/explain/batch" in str(body["detail"])
        assert explain(client, "gradcampp")[0] == 200
