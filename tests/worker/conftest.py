from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.jobs import JobStore
from core.settings import Settings
from tests.app.conftest import TEST_REDIS_URL


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
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
    yield JobStore.from_url(settings.redis_url, settings.jobs_dir)
    clear_jobs(settings.redis_url)
