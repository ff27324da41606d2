"""/metrics says what the service answered: by class, by unsure reason, the energy scores, and which
model serves; static files have route labels of their own."""

import re

from fastapi.testclient import TestClient

from app.main import create_app
from core.settings import Settings
from tests.app.conftest import png_bytes


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"no {name}{labels} in /metrics"
    return float(match.group(1))


def test_answers_are_counted_by_class_reason_and_energy(settings: Settings) -> None:
    settings.unsure_min_probability = 1.0  # every answer is unsure for low confidence
    with TestClient(create_app(settings)) as client:
        photos = [("files", (f"{i}.png", png_bytes(), "image/png")) for i in range(3)]
        results = client.post("/classify", files=photos).json()["results"]
        assert all(r["unsure_reasons"][0] == "low confidence" for r in results)
        client.post("/explain", files={"file": ("e.png", png_bytes(), "image/png")})
        text = client.get("/metrics").text
    labels = [r["label"] for r in results]
    assert metric(text, "trashcam_answers_total", f'{{label="{labels[0]}"}}') >= labels.count(labels[0])
    assert metric(text, "trashcam_unsure_answers_total", '{reason="low confidence"}') == 4
    assert metric(text, "trashcam_answer_energy_count") == 4
    assert metric(text, "trashcam_recent_answers") == 4
    assert metric(text, "trashcam_recent_unsure_share", '{reason="low confidence"}') == 1.0
    assert metric(text, "trashcam_recent_unsure_share", '{reason="any"}') == 1.0
    assert 'trashcam_serving_model_info{name="tiny",sha256="' in text


def test_static_files_and_docs_have_their_own_route_labels(client: TestClient) -> None:
    client.get("/ui/static/style.css")
    client.get("/docs/assets/swagger-ui.css")
    client.get("/no-such-page")
    text = client.get("/metrics").text
    assert metric(text, "trashcam_http_requests_total", '{method="GET",route="/ui/static",status="200"}') == 1
    assert (
        metric(text, "trashcam_http_requests_total", '{method="GET",route="/docs/assets",status="200"}') == 1
    )
    assert metric(text, "trashcam_http_requests_total", '{method="GET",route="unmatched",status="404"}') == 1
