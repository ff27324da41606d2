"""A site's fine-tune served beside its base: a photo nearer the base's training photos than the site's is
answered by the base (its probabilities, rule and heatmap), the answer says so, and the base cannot be
deleted while it answers for the serving model."""

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from core.settings import Settings
from models import predictor as predictor_module
from models.cam import compute_cam
from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from models.ood import OOD_FILE, FeatureBank
from models.predictor import Predictor
from tests.app.conftest import API_KEY, png_bytes, tiny_checkpoint


def solid_png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return buffer.getvalue()


SITE_PHOTO = png_bytes()
BASE_PHOTO = solid_png((250, 10, 200))


def embedding(path: Path, photo: bytes) -> np.ndarray:
    predictor = Predictor.from_checkpoint(str(path), name="m", version=None, device=torch.device("cpu"))
    return predictor.fingerprint([Image.open(io.BytesIO(photo)).convert("RGB")]).embeddings.numpy()


def site_beside(base: Path, site: Path, *, margin: float | None = 0.0) -> None:
    """Make ``site`` a fine-tune of ``base`` whose bank holds SITE_PHOTO as its own photo and BASE_PHOTO
    as its base's, routing with ``margin``."""
    checkpoint = load_checkpoint(site)
    recipe = {**checkpoint.spec.recipe, "init_sha256": load_checkpoint(base).sha256}
    save_checkpoint(
        site, checkpoint.state_dict, ModelSpec.from_dict({**checkpoint.spec.to_dict(), "recipe": recipe})
    )
    rows = np.concatenate([embedding(site, SITE_PHOTO), embedding(site, BASE_PHOTO)])
    bank = FeatureBank.from_embeddings(rows, model_sha256=load_checkpoint(site).sha256, own_photos=1)
    FeatureBank(bank.model_sha256, bank.embeddings, own_photos=1, route_margin=margin).save(
        site.parent / OOD_FILE
    )


@pytest.fixture
def routed_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shipped model is the base; the configured model (``site/model.pt``) is its site fine-tune."""
    shipped = tiny_checkpoint(tmp_path / "shipped" / "basemodel" / "model.pt", seed=1)
    site = tiny_checkpoint(tmp_path / "site" / "model.pt", seed=2)
    site_beside(shipped, site)
    return settings.model_copy(update={"shipped_model_path": shipped, "model_path": site})


def classify(client: TestClient, photo: bytes, **fields: str) -> dict[str, Any]:
    response = client.post("/classify", files={"file": ("p.png", photo, "image/png")}, data=fields)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_photos_like_the_bases_are_answered_by_the_base(routed_settings: Settings) -> None:
    with TestClient(create_app(routed_settings)) as client:
        site_answer = classify(client, SITE_PHOTO)
        routed = classify(client, BASE_PHOTO)
        base_itself = classify(client, BASE_PHOTO, model="basemodel:builtin")
        explained = client.post("/explain", files={"file": ("p.png", BASE_PHOTO, "image/png")}).json()
        base_explained = client.post(
            "/explain",
            files={"file": ("p.png", BASE_PHOTO, "image/png")},
            data={"model": "basemodel:builtin"},
        ).json()
        similar = client.post("/similar", files={"file": ("p.png", BASE_PHOTO, "image/png")})
    assert site_answer["model"]["name"] == "site"
    assert site_answer["routed_from"] is None
    assert routed["model"] == {"name": "basemodel", "version": "builtin"}
    assert routed["routed_from"] == site_answer["model"]
    # The base's own answer, probabilities and rule: as if it had been asked.
    assert routed["predictions"] == base_itself["predictions"]
    assert routed["rule"] == base_itself["rule"]
    assert base_itself["routed_from"] is None
    assert explained["model"] == routed["model"]
    assert explained["routed_from"] == site_answer["model"]
    assert explained["heatmap"] == base_explained["heatmap"]
    # /similar answers with the base too (the base has no index here: it says so).
    assert similar.status_code == 404
    assert similar.json()["detail"].startswith("basemodel:builtin: ")


def test_a_batch_mixes_both_models_answers_in_order(routed_settings: Settings) -> None:
    with TestClient(create_app(routed_settings)) as client:
        files = [
            ("files", ("a.png", BASE_PHOTO, "image/png")),
            ("files", ("b.png", SITE_PHOTO, "image/png")),
            ("files", ("c.png", BASE_PHOTO, "image/png")),
        ]
        results = client.post("/classify", files=files).json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "b.png", "c.png"]
    assert [r["model"]["name"] for r in results] == ["basemodel", "site", "basemodel"]


def test_the_base_of_the_serving_model_cannot_be_deleted(routed_settings: Settings, tmp_path: Path) -> None:
    # A stored base (the built-in one can never be deleted): the site model's base is version v1.
    base = tiny_checkpoint(tmp_path / "stored-base.pt", seed=3)
    site = tiny_checkpoint(tmp_path / "site2" / "model.pt", seed=4)
    site_beside(base, site)
    settings = routed_settings.model_copy(update={"model_path": site})
    with TestClient(create_app(settings)) as client:
        client.app.state.service.manager.store.add("stored", base)  # type: ignore[attr-defined]
        client.app.state.service.manager.load_initial()  # type: ignore[attr-defined]
        assert classify(client, BASE_PHOTO)["model"] == {"name": "stored", "version": "v1"}
        refused = client.delete("/models/stored/v1", headers={"X-API-Key": API_KEY})
    assert refused.status_code == 409
    assert "passes to its base" in refused.json()["detail"]


def test_without_its_base_in_the_store_a_model_answers_everything_itself(
    routed_settings: Settings, tmp_path: Path
) -> None:
    site = tiny_checkpoint(tmp_path / "orphan" / "model.pt", seed=5)
    site_beside(tiny_checkpoint(tmp_path / "gone.pt", seed=6), site)
    with TestClient(create_app(routed_settings.model_copy(update={"model_path": site}))) as client:
        answer = classify(client, BASE_PHOTO)
    assert answer["model"]["name"] == "orphan"
    assert answer["routed_from"] is None


def test_a_chain_of_site_models_names_the_one_that_answered(
    routed_settings: Settings, tmp_path: Path
) -> None:
    """site2 passes BASE_PHOTO to site1, which passes it to the shipped base."""
    shipped = routed_settings.shipped_model_path
    site1 = tiny_checkpoint(tmp_path / "site1.pt", seed=7)
    site_beside(shipped, site1)
    site2 = tiny_checkpoint(tmp_path / "chain" / "model.pt", seed=8)
    site_beside(site1, site2)
    with TestClient(create_app(routed_settings.model_copy(update={"model_path": site2}))) as client:
        manager = client.app.state.service.manager  # type: ignore[attr-defined]
        manager.store.add("site1", site1, extra=[site1.parent / OOD_FILE])
        manager.load_initial()
        assert manager.predictor.base is not None
        assert manager.predictor.base.base is not None  # site1 beside the shipped model
        routed = classify(client, BASE_PHOTO)
        base_itself = classify(client, BASE_PHOTO, model="basemodel:builtin")
        kept = classify(client, SITE_PHOTO)
    assert routed["model"] == {"name": "basemodel", "version": "builtin"}
    assert routed["routed_from"] == {"name": "chain", "version": kept["model"]["version"]}
    assert routed["predictions"] == base_itself["predictions"]
    assert kept["model"]["name"] == "chain"


def test_a_base_that_cannot_be_loaded_leaves_the_model_answering_alone(
    routed_settings: Settings, tmp_path: Path
) -> None:
    base = tiny_checkpoint(tmp_path / "stored-base.pt", seed=3)
    site = tiny_checkpoint(tmp_path / "site3" / "model.pt", seed=4)
    site_beside(base, site)
    with TestClient(create_app(routed_settings.model_copy(update={"model_path": site}))) as client:
        manager = client.app.state.service.manager  # type: ignore[attr-defined]
        manager.store.add("stored", base).path.write_bytes(b"damaged")
        manager.load_initial()
        assert manager.predictor.name == "site3"
        assert manager.predictor.base is None
        assert classify(client, BASE_PHOTO)["routed_from"] is None


def test_a_per_channel_explanation_explains_each_photo_once(
    routed_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu = torch.device("cpu")
    assert routed_settings.model_path is not None
    site = Predictor.from_checkpoint(str(routed_settings.model_path), name="site", version=None, device=cpu)
    base = Predictor.from_checkpoint(
        str(routed_settings.shipped_model_path), name="base", version=None, device=cpu
    )
    assert site.can_route_to(base)
    site.base = base
    photos = [Image.open(io.BytesIO(photo)).convert("RGB") for photo in (SITE_PHOTO, BASE_PHOTO, SITE_PHOTO)]
    explained: list[int] = []
    real = compute_cam

    def counted(model: torch.nn.Module, images: torch.Tensor, **options: Any) -> Any:
        explained.append(len(images))
        return real(model, images, **options)

    monkeypatch.setattr(predictor_module, "compute_cam", counted)
    result = site.explain(photos, method="scorecam", targets=[1, 2, 3])
    assert sorted(explained) == [1, 2]  # the base's photo alone, the site's two
    assert [who.name for who in result.answered_by] == ["site", "base", "site"]
    assert result.targets.tolist() == [1, 2, 3]
    alone = base.explain([photos[1]], method="scorecam", targets=[2])
    assert torch.allclose(result.heatmaps[1], alone.heatmaps[0])
    assert torch.allclose(result.probabilities[1], alone.probabilities[0])
    explained.clear()
    site.explain(photos, method="gradcam")  # one pass for all, the base's photo again by the base
    assert sorted(explained) == [1, 3]
