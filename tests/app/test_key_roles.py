"""Keys have names and roles: read (classify, explain, list), train (also start and cancel jobs), admin
(also promote, roll back and delete models). Job records and promotions carry the key's name; a plain
list of keys keeps working, as admin keys."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from core.model_manager import model_store
from core.settings import ApiKey, Settings
from tests.app.conftest import FakeSubmitter, tiny_checkpoint
from tests.app.test_job_routes import zip_of_folder
from tests.training.helpers import make_image_folder

READER, TRAINER, ADMIN = "reader-key-0123456789", "trainer-key-0123456789", "admin-key-0123456789"


@pytest.fixture
def client(settings: Settings, submitted: FakeSubmitter, tmp_path: Path) -> Iterator[TestClient]:
    settings.api_keys = [
        ApiKey(name="kiosk", key=SecretStr(READER), role="read"),
        ApiKey(name="site-a-ops", key=SecretStr(TRAINER), role="train"),
        ApiKey(name="platform", key=SecretStr(ADMIN), role="admin"),
    ]
    # A fresh install: the shipped model serves, so a rollback has a stored version to go back to.
    settings.model_path = None
    settings.shipped_model_path = tiny_checkpoint(tmp_path / "weights" / "net" / "model.pt", seed=7)
    model_store(settings).add("waste", tiny_checkpoint(tmp_path / "w.pt", seed=3))
    with TestClient(create_app(settings, submitter=submitted)) as test_client:
        yield test_client


def archive(tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    return {"file": ("data.zip", zip_of_folder(make_image_folder(tmp_path / "photos", per_class=3)))}


def test_a_read_key_cannot_train_or_promote(client: TestClient, tmp_path: Path) -> None:
    refused = client.post("/train", files=archive(tmp_path), headers={"X-API-Key": READER})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "the key 'kiosk' has the read role; this needs train"
    promote = client.put("/models/default", json={"name": "waste"}, headers={"X-API-Key": READER})
    assert promote.status_code == 403


def test_a_train_key_starts_jobs_under_its_name_but_cannot_promote(
    client: TestClient, submitted: FakeSubmitter, tmp_path: Path
) -> None:
    started = client.post("/train", files=archive(tmp_path), headers={"X-API-Key": TRAINER})
    assert started.status_code == 202, started.text
    assert started.json()["submitted_by"] == "site-a-ops"
    assert submitted.jobs[0].submitted_by == "site-a-ops"
    promote = client.put("/models/default", json={"name": "waste"}, headers={"X-API-Key": TRAINER})
    assert promote.status_code == 403
    assert "needs admin" in promote.json()["detail"]
    assert client.delete("/models/waste/v1", headers={"X-API-Key": TRAINER}).status_code == 403


def test_an_admin_key_promotes_and_the_history_names_it(client: TestClient) -> None:
    assert (
        client.put("/models/default", json={"name": "waste"}, headers={"X-API-Key": ADMIN}).status_code == 200
    )
    assert client.post("/models/default/rollback", headers={"X-API-Key": ADMIN}).status_code == 200
    assert [entry["by"] for entry in client.get("/models/default/history").json()] == ["platform", "platform"]


def test_keys_are_read_from_the_environment_named_or_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TRASHCAM_API_KEYS", f'[{{"name": "kiosk", "key": "{READER}", "role": "read"}}, "{ADMIN}"]'
    )
    kiosk, plain = Settings().api_keys
    assert (kiosk.name, kiosk.role) == ("kiosk", "read")
    assert (plain.name, plain.role, plain.key.get_secret_value()) == ("key-2", "admin", ADMIN)
    monkeypatch.setenv("TRASHCAM_API_KEYS", f'["{ADMIN}", {{"name": "key-1", "key": "{TRAINER}"}}]')
    with pytest.raises(ValueError, match="names must differ"):
        Settings()


def test_a_named_key_without_a_role_only_reads_and_secrets_are_not_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRASHCAM_API_KEYS", f'[{{"name": "kiosk", "key": "{READER}"}}]')
    (kiosk,) = Settings().api_keys
    assert kiosk.role == "read"
    twice = [{"name": "a", "key": READER, "role": "read"}, {"name": "b", "key": READER, "role": "admin"}]
    monkeypatch.setenv("TRASHCAM_API_KEYS", json.dumps(twice))
    with pytest.raises(ValueError, match="same secret"):
        Settings()
