"""The registry as an operator meets it on day one: the shipped model is a read-only built-in version,
every promotion is recorded and can be rolled back, versions can be deleted, and every inference route
answers with the version a request names."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.model_manager import model_store
from core.model_store import ModelStore
from core.settings import Settings
from tests.app.conftest import API_KEY, png_bytes, tiny_checkpoint

KEY = {"X-API-Key": API_KEY}
PHOTO = {"file": ("p.png", png_bytes(), "image/png")}


@pytest.fixture
def fresh(settings: Settings, tmp_path: Path) -> Settings:
    """A fresh install: nothing configured or stored, a shipped model in its folder."""
    settings.model_path = None
    settings.shipped_model_path = tiny_checkpoint(tmp_path / "weights" / "shipped_net" / "model.pt", seed=7)
    return settings


@pytest.fixture
def client(fresh: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(fresh)) as test_client:
        yield test_client


@pytest.fixture
def store(fresh: Settings, tmp_path: Path) -> ModelStore:
    store = model_store(fresh)
    store.add("site-a", tiny_checkpoint(tmp_path / "a.pt", seed=1))
    store.add("site-a", tiny_checkpoint(tmp_path / "b.pt", seed=2))
    return store


def serving(client: TestClient) -> str:
    ref = client.get("/models").json()["serving"]
    return f"{ref['name']}:{ref['version']}"


def test_a_fresh_install_lists_the_shipped_model_it_serves(client: TestClient) -> None:
    listed = client.get("/models").json()
    assert listed["serving"] == {"name": "shipped_net", "version": "builtin"}
    (builtin,) = listed["models"]
    assert (builtin["name"], builtin["version"], builtin["builtin"], builtin["default"]) == (
        "shipped_net",
        "builtin",
        True,
        True,
    )
    assert client.get("/models/default").json()["builtin"] is True
    compared = client.post("/explain", files=PHOTO, data={"model": "shipped_net:builtin"})
    assert compared.status_code == 200, compared.text


def test_the_shipped_model_serves_again_after_a_promotion_and_history_says_who_when_what(
    client: TestClient, store: ModelStore
) -> None:
    assert (
        client.put("/models/default", json={"name": "site-a", "version": "v1"}, headers=KEY).status_code
        == 200
    )
    assert serving(client) == "site-a:v1"
    back = client.put("/models/default", json={"name": "shipped_net", "version": "builtin"}, headers=KEY)
    assert back.status_code == 200, back.text
    assert serving(client) == "shipped_net:builtin"
    history = client.get("/models/default/history").json()
    assert [(h["from"], h["to"], h["reason"]) for h in history] == [
        ("shipped_net:builtin", "site-a:v1", "promote"),
        ("site-a:v1", "shipped_net:builtin", "promote"),
    ]
    assert all(isinstance(h["at"], float) for h in history)


def test_a_rollback_undoes_the_last_promotion_and_a_second_undoes_the_first(
    client: TestClient, store: ModelStore
) -> None:
    assert client.post("/models/default/rollback", headers=KEY).status_code == 409  # nothing on record
    client.put("/models/default", json={"name": "site-a", "version": "v2"}, headers=KEY)
    first = client.post("/models/default/rollback", headers=KEY)
    assert first.status_code == 200, first.text
    assert serving(client) == "shipped_net:builtin"
    client.post("/models/default/rollback", headers=KEY)
    assert serving(client) == "site-a:v2"
    assert client.get("/models/default/history").json()[-1]["reason"] == "rollback of shipped_net:builtin"
    assert client.post("/models/default/rollback").status_code == 401


def test_versions_can_be_deleted_but_not_the_builtin_or_the_serving_one(
    client: TestClient, store: ModelStore
) -> None:
    assert client.delete("/models/shipped_net/builtin", headers=KEY).status_code == 409
    client.put("/models/default", json={"name": "site-a", "version": "v2"}, headers=KEY)
    in_use = client.delete("/models/site-a/v2", headers=KEY)
    assert in_use.status_code == 409
    assert "serving" in in_use.json()["detail"]
    assert client.delete("/models/site-a/v1").status_code == 401
    assert client.delete("/models/site-a/v1", headers=KEY).status_code == 204
    assert [m["version"] for m in client.get("/models/site-a").json()] == ["v2"]
    assert client.delete("/models/site-a/v1", headers=KEY).status_code == 404
    # What served before it was deleted cannot be rolled back to: said, not a 500.
    client.put("/models/default", json={"name": "shipped_net", "version": "builtin"}, headers=KEY)
    client.put("/models/default", json={"name": "site-a", "version": "v2"}, headers=KEY)
    assert client.delete("/models/site-a/v2", headers=KEY).status_code == 409


def test_deleting_the_last_version_with_some_weights_removes_their_compiled_networks(
    client: TestClient, store: ModelStore, fresh: Settings
) -> None:
    conversions = fresh.runtime_cache / "openvino"
    first, second = store.get("site-a", "v1"), store.get("site-a", "v2")
    store.add("site-b", first.path)  # the same weights as site-a:v1, under another name

    def cached(sha256: str) -> Path:
        folder = conversions / f"{sha256}-32px-2026.4.1-format1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.xml").write_text("<net/>")
        return folder

    first_cache, second_cache = cached(first.sha256), cached(second.sha256)
    assert client.delete("/models/site-a/v2", headers=KEY).status_code == 204
    assert not second_cache.exists()
    # site-b:v1 still has site-a:v1's weights: their network stays until the last of them goes.
    assert client.delete("/models/site-a/v1", headers=KEY).status_code == 204
    assert first_cache.exists()
    assert client.delete("/models/site-b/v1", headers=KEY).status_code == 204
    assert not first_cache.exists()


@pytest.mark.parametrize("route", ["/classify", "/explain", "/fingerprint"])
def test_every_inference_route_answers_with_the_version_it_is_asked_for(
    client: TestClient, store: ModelStore, route: str
) -> None:
    answered = client.post(route, files=PHOTO, data={"model": "site-a:v1"})
    assert answered.status_code == 200, answered.text
    body = answered.json()
    model = body["results"][0]["model"] if route == "/classify" else body["model"]
    assert model == {"name": "site-a", "version": "v1"}
    assert serving(client) == "shipped_net:builtin"
    unknown = client.post(route, files=PHOTO, data={"model": "site-b"})
    assert unknown.status_code == 422
    assert "known: shipped_net, site-a" in unknown.json()["detail"]


def test_similar_takes_the_model_field_too(client: TestClient, store: ModelStore) -> None:
    unknown = client.post("/similar", files=PHOTO, data={"model": "site-a:v9"})
    assert unknown.status_code == 422
    assert "has no version 'v9'" in unknown.json()["detail"]
