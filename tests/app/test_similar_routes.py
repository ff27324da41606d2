import base64
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from core.settings import Settings
from models.similarity import INDEX_FILE
from tests.app.conftest import CLASSES
from tests.training.helpers import make_image_folder
from training.data import Loading, Photos
from training.index import build_index


@pytest.fixture
def indexed(settings: Settings, tmp_path: Path) -> Path:
    """The served tiny model's index of a small photo folder, beside its checkpoint."""
    assert settings.model_path is not None
    root = make_image_folder(tmp_path / "photos", per_class=3)
    samples = [(f"{name}/{name}{i}.png", label) for label, name in enumerate(CLASSES) for i in range(3)]
    index = build_index(settings.model_path, Photos(root, samples, CLASSES), Loading(torch.device("cpu")))
    index.save(settings.model_path.parent / INDEX_FILE)
    return root


def photo(root: Path, name: str = "glass/glass1.png") -> tuple[str, bytes, str]:
    return (Path(name).name, (root / name).read_bytes(), "image/png")


def test_fingerprint_is_the_photos_hash(client: TestClient, indexed: Path) -> None:
    response = client.post("/fingerprint", files={"file": photo(indexed)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["hash"]) == 16
    int(body["hash"], 16)
    assert body["model"]["name"] == "tiny"
    assert body["backend"] == "torch"  # the tests' simple CNN has no pooled linear head to compile
    again = client.post("/fingerprint", files={"file": photo(indexed)}).json()
    assert again["hash"] == body["hash"]


@pytest.mark.parametrize("by", ["hash", "embedding"])
def test_a_training_photo_finds_itself_first(client: TestClient, indexed: Path, by: str) -> None:
    response = client.post("/similar", files={"file": photo(indexed)}, data={"k": "4", "by": by})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["indexed"] == 18
    assert body["by"] == by
    assert body["search_ms"] >= 0
    first, *rest = body["neighbours"]
    assert (first["rank"], first["path"], first["label"]) == (1, "glass/glass1.png", "glass")
    assert first["distance"] == pytest.approx(0.0, abs=1e-3)  # fp16 embeddings: a hair off itself
    assert len(rest) == 3
    assert [n["distance"] for n in body["neighbours"]] == sorted(n["distance"] for n in body["neighbours"])
    assert base64.b64decode(first["thumbnail"]).startswith(b"\xff\xd8")  # a JPEG


def test_similar_without_an_index_is_404_and_bad_options_422(client: TestClient, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "photos", per_class=1)
    response = client.post("/similar", files={"file": photo(root, "glass/glass0.png")})
    assert response.status_code == 404
    assert "trashcam-train index" in response.json()["detail"]
    for data in ({"k": "0"}, {"k": "51"}, {"by": "colour"}):
        response = client.post("/similar", files={"file": photo(root, "glass/glass0.png")}, data=data)
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], str)


def test_an_index_of_other_weights_is_not_used(settings: Settings, indexed: Path, tmp_path: Path) -> None:
    from tests.app.conftest import tiny_checkpoint

    assert settings.model_path is not None
    tiny_checkpoint(settings.model_path, seed=9)  # new weights; the index beside them is the old one's
    with TestClient(create_app(settings)) as client:
        response = client.post("/similar", files={"file": photo(indexed)})
    assert response.status_code == 404
    assert "computed with weights" in response.json()["detail"]
