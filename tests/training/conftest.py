"""Fixtures for the training tests: tiny image folders and one shared, uninterrupted reference run."""

from pathlib import Path

import pytest

from tests.training.helpers import make_image_folder, tiny_config, write_broken_images
from training.engine import TrainResult, train


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """6 classes x 8 PNGs, fresh for each test (tests may damage it)."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data set of the reference run: 6 classes x 8 images plus two unreadable files."""
    root = make_image_folder(tmp_path_factory.mktemp("reference") / "images")
    write_broken_images(root / "glass")
    return root


@pytest.fixture(scope="session")
def reference_run(reference_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The tiny run trained without interruption, with two loader workers (the resumed runs use none,
    so matching it also shows that results do not depend on the worker count)."""
    out = tmp_path_factory.mktemp("reference-run") / "run"
    return train(tiny_config(reference_data, out, workers=2))
