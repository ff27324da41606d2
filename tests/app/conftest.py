import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

import models
from app.main import create_app
from core.jobs import Job
from core.settings import Settings
from models.checkpoint import ModelSpec, save_checkpoint
from models.transforms import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
API_KEY = "test-key-0123456789"
#: Tests use their own Redis database, so they never touch a running service's jobs.
TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def tiny_checkpoint(path: Path, *, seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """A small random simple CNN with a real spec: fast enough for every API test."""
    import torch

    torch.manual_seed(seed)
    spec = ModelSpec(
        arch="simple_cnn",
        class_names=classes,
        input_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        arch_kwargs={"width": 4},
        recipe={"note": "random weights for tests"},
        metrics={},
    )
    save_checkpoint(path, models.create_model("simple_cnn", num_classes=len(classes), width=4), spec)
    return path


def png_bytes(size: tuple[int, int] = (40, 30), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def api_settings(folder: Path) -> Settings:
    """Settings for an API test: a tiny model, every folder under ``folder``, one API key."""
    return Settings(
        model_path=tiny_checkpoint(folder / "tiny.pt"),
        var_dir=folder / "var",
        shipped_model_path=folder / "no-shipped-model.pt",
        api_keys=[SecretStr(API_KEY)],
        batch_max_wait_ms=2.0,
        redis_url=TEST_REDIS_URL,
        data_root=folder / "data-root",
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return api_settings(tmp_path)


class FakeSubmitter:
    """Records the jobs the API would queue."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def __call__(self, job: Job) -> None:
        self.jobs.append(job)


@pytest.fixture
def submitted() -> FakeSubmitter:
    return FakeSubmitter()


@pytest.fixture
def client(settings: Settings, submitted: FakeSubmitter) -> Iterator[TestClient]:
    with TestClient(create_app(settings, submitter=submitted)) as test_client:
        yield test_client
