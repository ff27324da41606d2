"""Answers carry the feature distance to the training photos and the rule's thresholds; a photo far
from every training photo is unsure for that reason."""

import io
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from core.settings import Settings
from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from models.ood import OOD_FILE, FeatureBank
from models.predictor import Predictor
from tests.app.conftest import png_bytes

MAX_DISTANCE = 0.01


def flat_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (250, 10, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def with_bank_of(settings: Settings, photo: bytes) -> None:
    """Give the test model a feature bank of one training photo and a distance threshold."""
    path = settings.model_path
    assert path is not None
    checkpoint = load_checkpoint(path)
    calibration = {"temperature": 1.0, "min_probability": 0.0, "max_distance": MAX_DISTANCE}
    spec = ModelSpec.from_dict({**checkpoint.spec.to_dict(), "calibration": calibration})
    save_checkpoint(path, checkpoint.state_dict, spec)
    predictor = Predictor.from_checkpoint(str(path), name="tiny", version=None, device=torch.device("cpu"))
    embedding = predictor.fingerprint([Image.open(io.BytesIO(photo)).convert("RGB")]).embeddings
    FeatureBank.from_embeddings(embedding.numpy(), model_sha256=checkpoint.sha256, k=1).save(
        Path(path).parent / OOD_FILE
    )


def test_a_photo_unlike_the_training_photos_is_unsure_for_it(settings: Settings) -> None:
    with_bank_of(settings, png_bytes())
    with TestClient(create_app(settings)) as client:
        files = [
            ("files", ("seen.png", png_bytes(), "image/png")),
            ("files", ("new.png", flat_png(), "image/png")),
        ]
        seen, new = client.post("/classify", files=files).json()["results"]
        explained = client.post("/explain", files={"file": ("new.png", flat_png(), "image/png")}).json()
        text = client.get("/metrics").text
    assert seen["distance"] < MAX_DISTANCE
    assert seen["unsure_reasons"] == []
    assert new["distance"] > MAX_DISTANCE
    assert new["unsure_reasons"] == ["unlike the training photos"]
    assert new["rule"] == {
        "min_probability": 0.0,
        "max_energy": None,
        "max_distance": MAX_DISTANCE,
        "target_accuracy": None,
    }
    # /explain measures it from the same forward pass as its heatmap.
    assert np.isclose(explained["distance"], new["distance"], atol=1e-3)
    assert explained["unsure_reasons"] == ["unlike the training photos"]
    assert "trashcam_answer_distance_count 3.0" in text


def test_without_a_bank_there_is_no_distance_and_the_rule_says_so(client: TestClient) -> None:
    result = client.post("/classify", files={"file": ("a.png", png_bytes(), "image/png")}).json()["results"][
        0
    ]
    assert result["distance"] is None
    assert result["rule"]["max_distance"] is None
