from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.config import Settings
from tests.app.conftest import TEST_REDIS_URL
from worker.jobs import JobStore


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        shipped_model_path=tmp_path / "none.pt",
        redis_url=TEST_REDIS_URL,
        job_lock_seconds=30,
    )


@pytest.fixture
def jobs(settings: Settings) -> Iterator[JobStore]:
    store = JobStore.from_url(settings.redis_url, settings.jobs_dir)
    yield store
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter("trashcam:*"):
        client.delete(key)
