import asyncio
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.model_manager import model_store
from core.model_store import ModelStore
from core.settings import Settings
from tests.app.conftest import API_KEY, png_bytes, tiny_checkpoint
from worker.runner import serving_manager


@pytest.fixture
def stored(settings: Settings, tmp_path: Path) -> ModelStore:
    store = model_store(settings)
    store.add("waste", tiny_checkpoint(tmp_path / "a.pt", seed=1), report={"accuracy": 0.5})
    store.add("waste", tiny_checkpoint(tmp_path / "b.pt", seed=2))
    store.add("other", tiny_checkpoint(tmp_path / "c.pt", seed=3, classes=("a", "b")))
    return store


def test_list_models_shows_versions_and_what_serves(client: TestClient, stored: ModelStore) -> None:
    body = client.get("/models").json()
    assert body["serving"]["name"] == "tiny"
    assert [(m["name"], m["version"]) for m in body["models"]] == [
        ("other", "v1"),
        ("waste", "v1"),
        ("waste", "v2"),
    ]
    waste = body["models"][1]
    assert waste["arch"] == "simple_cnn"
    assert waste["input_size"] == 32
    assert waste["classes"][0] == "cardboard"
    assert len(waste["sha256"]) == 64
    assert waste["default"] is False


def test_one_model_and_unknown_model(client: TestClient, stored: ModelStore) -> None:
    assert [m["version"] for m in client.get("/models/waste").json()] == ["v1", "v2"]
    missing = client.get("/models/nothing")
    assert missing.status_code == 404
    assert "no model named 'nothing'; known: other, waste" in missing.json()["detail"]


def test_switching_the_default_needs_a_valid_key(client: TestClient, stored: ModelStore) -> None:
    body = {"name": "waste", "version": "v1"}
    assert client.put("/models/default", json=body).status_code == 401
    assert client.put("/models/default", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert stored.default() is None


def test_state_changes_are_refused_when_no_key_is_configured(settings: Settings, stored: ModelStore) -> None:
    settings.api_keys = []
    with TestClient(create_app(settings)) as client:
        response = client.put("/models/default", json={"name": "waste"}, headers={"X-API-Key": "anything"})
    assert response.status_code == 403
    assert "none is configured" in response.json()["detail"]


def test_switching_the_default_serves_the_new_model(client: TestClient, stored: ModelStore) -> None:
    response = client.put("/models/default", json={"name": "waste"}, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200
    assert (response.json()["version"], response.json()["default"]) == ("v2", True)
    assert stored.default() is not None
    classified = client.post("/classify", files={"file": ("p.png", png_bytes(), "image/png")}).json()
    assert classified["results"][0]["model"] == {"name": "waste", "version": "v2"}
    serving = client.get("/models/default").json()
    assert (serving["name"], serving["version"], serving["default"]) == ("waste", "v2", True)


def test_the_default_model_when_a_configured_checkpoint_serves(
    client: TestClient, stored: ModelStore
) -> None:
    response = client.get("/models/default")
    assert response.status_code == 404
    assert "is not a stored version" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "nope"}, "no model named 'nope'"),
        ({"name": "waste", "version": "v9"}, "has no version 'v9'"),
    ],
)
def test_switching_to_an_unknown_model_is_404(
    client: TestClient, stored: ModelStore, body: dict[str, str], message: str
) -> None:
    response = client.put("/models/default", json=body, headers={"X-API-Key": API_KEY})
    assert response.status_code == 404
    assert message in response.json()["detail"]


def test_a_stored_checkpoint_that_cannot_load_is_409(client: TestClient, stored: ModelStore) -> None:
    (stored.get("waste", "v1").path).write_bytes(b"damaged")
    response = client.put(
        "/models/default", json={"name": "waste", "version": "v1"}, headers={"X-API-Key": API_KEY}
    )
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "cannot be served" in detail
    # The message names the file by the store's label, never by the server's folders.
    assert str(stored.root) not in detail
    assert "<models>/waste/v1/model.pt" in detail
    assert client.post("/classify", files={"file": ("p.png", png_bytes(), "image/png")}).status_code == 200


def test_model_records_show_no_server_paths(
    client: TestClient, settings: Settings, stored: ModelStore, tmp_path: Path
) -> None:
    from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(tiny_checkpoint(tmp_path / "d.pt", seed=4))
    data = settings.resolved_data_root / "site-a" / "photos.zip"
    recipe = {"data_source": f"site={data}, public=/home/someone/sets/extra.tar.gz", "seed": 0}
    spec = ModelSpec.from_dict({**checkpoint.spec.to_dict(), "recipe": recipe})
    save_checkpoint(tmp_path / "d.pt", checkpoint.state_dict, spec)
    stored.add("site", tmp_path / "d.pt")
    (listed,) = client.get("/models/site").json()
    assert listed["recipe"]["data_source"] == "site=<data root>/site-a/photos.zip, public=extra.tar.gz"
    assert str(tmp_path) not in client.get("/models").text


def test_weights_swapped_in_with_their_own_digest_are_409(
    client: TestClient, stored: ModelStore, tmp_path: Path
) -> None:
    version = stored.get("waste", "v1")
    # A valid checkpoint (its embedded digest matches its weights), but not the one the store registered.
    tiny_checkpoint(version.path, seed=99)
    response = client.put(
        "/models/default", json={"name": "waste", "version": "v1"}, headers={"X-API-Key": API_KEY}
    )
    assert response.status_code == 409
    assert "are not the registered" in response.json()["detail"]
    assert client.get("/models").json()["serving"]["name"] != "waste"


def test_short_api_keys_are_refused() -> None:
    from pydantic import SecretStr, ValidationError

    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(api_keys=[SecretStr("short")])


def test_reads_can_be_protected(settings: Settings) -> None:
    settings.protect_reads = True
    with TestClient(create_app(settings)) as client:
        assert client.get("/models").status_code == 401
        assert client.get("/models", headers={"X-API-Key": API_KEY}).status_code == 200
        assert client.get("/health").status_code == 200


def test_a_swap_drops_no_request_in_flight(settings: Settings, stored: ModelStore) -> None:
    settings.batch_max_wait_ms = 20.0
    app = create_app(settings)

    async def run() -> tuple[list[httpx2.Response], httpx2.Response]:
        transport = httpx2.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=transport, base_url="http://t") as ac,
        ):
            photo = {"file": ("p.png", png_bytes(), "image/png")}
            requests = [ac.post("/explain", files=photo) for _ in range(12)]
            swap = ac.put(
                "/models/default", json={"name": "waste", "version": "v1"}, headers={"X-API-Key": API_KEY}
            )
            *explained, swapped = await asyncio.gather(*requests, swap)
            return explained, swapped

    explained, swapped = asyncio.run(run())
    assert swapped.status_code == 200
    assert [r.status_code for r in explained] == [200] * 12
    served = {r.json()["model"]["name"] for r in explained}
    assert served <= {"tiny", "waste"}


def test_a_default_set_by_another_process_is_picked_up(
    settings: Settings, stored: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.main.MODEL_REFRESH_SECONDS", 0.05)
    app = create_app(settings)

    async def run() -> dict[str, str]:
        transport = httpx2.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=transport, base_url="http://t") as ac,
        ):
            stored.set_default("waste", "v1")  # as a finished training job would
            for _ in range(100):
                await asyncio.sleep(0.05)
                serving: dict[str, str] = (await ac.get("/models")).json()["serving"]
                if serving["name"] == "waste":
                    return serving
        raise AssertionError("the new default was never picked up")

    assert asyncio.run(run()) == {"name": "waste", "version": "v1"}


def test_a_corrupt_default_falls_back_to_its_last_good_version(
    settings: Settings, stored: ModelStore
) -> None:
    stored.set_default("waste", "v2")
    stored.get("waste", "v2").path.write_bytes(b"damaged")
    settings.model_path = None
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready").json()
        assert ready["model"] == {
            "name": "waste",
            "version": "v1",
            "sha256": stored.get("waste", "v1").sha256,
        }
        assert "model waste:v2 cannot be loaded" in ready["detail"]
        assert str(settings.models_dir) not in ready["detail"]
        response = client.post("/classify", files={"file": ("p.png", png_bytes(), "image/png")})
        assert response.status_code == 200


def test_with_every_checkpoint_corrupt_the_service_starts_and_says_why(
    settings: Settings, stored: ModelStore
) -> None:
    stored.set_default("other")
    stored.get("other").path.write_bytes(b"damaged")
    settings.model_path = None
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "no model loaded" in ready.json()["detail"]
        assert "model other:v1 cannot be loaded" in ready.json()["detail"]
        response = client.post("/classify", files={"file": ("p.png", png_bytes(), "image/png")})
        assert response.status_code == 503


def test_explain_with_another_stored_version_to_compare(client: TestClient, stored: ModelStore) -> None:
    photo = {"file": ("p.png", png_bytes(), "image/png")}
    serving = client.post("/explain", files=photo).json()
    other = client.post("/explain", files=photo, data={"model": "other:v1"}).json()
    assert other["model"] == {"name": "other", "version": "v1"}
    assert {p["label"] for p in other["predictions"]} == {"a", "b"}
    assert serving["model"]["name"] == "tiny"  # what serves is unchanged
    assert client.post("/explain", files=photo, data={"model": "waste"}).json()["model"]["version"] == "v2"
    response = client.post("/explain", files=photo, data={"model": "nope:v1"})
    assert response.status_code == 422
    assert "no model named 'nope'" in response.json()["detail"]


def test_one_rule_decides_what_serves_in_the_api_after_a_restart_and_in_the_workers(
    settings: Settings, stored: ModelStore
) -> None:
    """With TRASHCAM_MODEL_PATH set, a promotion still decides what serves: in the API that made it, in an
    API started again, and in a heatmap worker started after it."""
    assert settings.model_path is not None
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready").json()
        assert ready["model"]["name"] == "tiny"
        assert ready["model_source"] == "the configured model: TRASHCAM_MODEL_PATH, no default is set"
        promoted = client.put(
            "/models/default", json={"name": "waste", "version": "v1"}, headers={"X-API-Key": API_KEY}
        )
        assert promoted.status_code == 200, promoted.text
        assert client.get("/ready").json()["model_source"] == "model waste:v1: the store's default"
    with TestClient(create_app(settings)) as restarted:
        ready = restarted.get("/ready").json()
        assert ready["model"] == {
            "name": "waste",
            "version": "v1",
            "sha256": stored.get("waste", "v1").sha256,
        }
        assert ready["model_source"] == "model waste:v1: the store's default"
    worker = serving_manager(settings)
    assert (worker.predictor.name, worker.predictor.version) == ("waste", "v1")
    assert worker.source == "model waste:v1: the store's default"
