"""PostgreSQL gone for a while (a restart, a network fault): what needs it answers 503 with Retry-After,
what does not goes on, and everything comes back when it does, with nothing lost."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import API_KEY, FakeSubmitter, api_settings, png_bytes
from tests.app.test_job_routes import zip_of_folder
from tests.faults import Relay, relayed_postgres_database
from tests.training.helpers import make_image_folder

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def relay() -> Iterator[tuple[Relay, str]]:
    """A PostgreSQL database of the test's own, reached through a relay the test can cut."""
    with relayed_postgres_database() as relayed:
        yield relayed


def test_requests_that_need_the_database_are_503_while_it_is_down(
    relay: tuple[Relay, str], tmp_path: Path
) -> None:
    cut, url = relay
    dataset_zip = zip_of_folder(make_image_folder(tmp_path / "photos", per_class=3))
    settings = api_settings(tmp_path).model_copy(update={"database_url": url})
    with TestClient(create_app(settings, submitter=FakeSubmitter())) as client:
        job = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY)
        assert job.status_code == 202, job.text
        cut.cut()
        listing = client.get("/train")
        assert listing.status_code == 503
        assert listing.headers["Retry-After"] == "5"
        assert "database cannot be reached" in listing.json()["detail"]
        refused = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY)
        assert refused.status_code == 503
        # Classifying needs no database.
        assert client.post("/classify", files={"file": ("a.png", png_bytes())}).status_code == 200
        cut.restore()
        back = client.get("/train")
        assert back.status_code == 200
        assert [item["id"] for item in back.json()] == [job.json()["id"]]  # nothing lost
