import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from core import database
from core.jobs import HeatmapParams, JobStore, TrainingParams
from core.settings import Settings
from tests.app.conftest import TEST_REDIS_URL
from tests.databases import postgres_database
from training.config import make_config


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each store test runs on both databases: SQLite (the default: None) and PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        database_url=database_url,
        shipped_model_path=tmp_path / "none.pt",
        redis_url=TEST_REDIS_URL,
        job_lock_seconds=30,
    )


def clear_jobs(url: str) -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter("trashcam:*"):
        client.delete(key)


@pytest.fixture
def jobs(settings: Settings) -> Iterator[JobStore]:
    """A job store that starts empty (other tests' jobs may be left in the test database)."""
    clear_jobs(settings.redis_url)
    yield JobStore.from_settings(settings)
    clear_jobs(settings.redis_url)


def training_params(name: str = "x", **config: Any) -> TrainingParams:
    """A training job's parameters, as ``POST /train`` builds them (default: data and a run that do not
    exist, for tests that never train)."""
    values = {"data": "nowhere", "out": "nowhere/run", **config}
    return TrainingParams(name=name, config=make_config(**values), source="test")


HEATMAPS = HeatmapParams(method="gradcam", colormap="jet", alpha=0.5)


def stored_record(jobs: JobStore, job_id: str) -> str:
    """A job's record as its row holds it."""
    with jobs.database.read() as db:
        text: str = db.execute(
            select(database.jobs.c.record).where(database.jobs.c.id == job_id)
        ).scalar_one()
    return text


def store_record(
    jobs: JobStore, job_id: str, record: dict[str, Any] | str, *, state: str | None = None
) -> None:
    """Write a job's row as another version of the service (or a damaged store) would leave it: the
    record's text, and the format (and state) it says, beside it."""
    text = record if isinstance(record, str) else json.dumps(record)
    columns: dict[str, Any] = {"record": text}
    if isinstance(record, dict) and isinstance(record.get("format"), int):
        columns["format"] = record["format"]
    if state is not None:
        columns["state"] = state
    with jobs.database.write() as db:
        db.execute(update(database.jobs).where(database.jobs.c.id == job_id).values(**columns))


def insert_record(jobs: JobStore, record: dict[str, Any]) -> None:
    """A row for a record that an older version of the service wrote, as ``trashcam db import`` makes
    it (``core.importing``)."""
    from core.importing import record_columns

    row = record_columns(record["id"], json.dumps(record))
    assert row is not None
    jobs.folder(record["id"]).mkdir(parents=True, exist_ok=True)
    with jobs.database.write() as db:
        db.execute(database.jobs.insert().values(**row, record=json.dumps(record)))
