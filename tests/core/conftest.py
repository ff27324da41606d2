from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.jobs import HeatmapParams, JobStore, TrainingParams
from core.settings import Settings
from tests.app.conftest import TEST_REDIS_URL
from training.config import make_config


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


def training_params(name: str = "x", **config: Any) -> TrainingParams:
    """A training job's parameters, as ``POST /train`` builds them (default: data and a run that do not
    exist, for tests that never train)."""
    values = {"data": "nowhere", "out": "nowhere/run", **config}
    return TrainingParams(name=name, config=make_config(**values), source="test")


HEATMAPS = HeatmapParams(method="gradcam", colormap="jet", alpha=0.5)
