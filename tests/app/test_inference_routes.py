import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from app.main import create_app
from bench.bad_images import BadImage, corpus
from core.settings import Settings
from models.cam import list_cam_methods
from tests.app.conftest import CLASSES, png_bytes


def upload(name: str = "photo.png", data: bytes | None = None) -> tuple[str, bytes, str]:
    return (name, png_bytes() if data is None else data, "image/png")


def decode_png(text: str) -> Image.Image:
    data = base64.b64decode(text)
    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data))


def test_classify_one_image(client: TestClient) -> None:
    response = client.post("/classify", files={"file": upload()})
    assert response.status_code == 200
    (result,) = response.json()["results"]
    probabilities = [p["probability"] for p in result["predictions"]]
    assert sorted(p["label"] for p in result["predictions"]) == sorted(CLASSES)
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert result["label"] == result["predictions"][0]["label"]
    assert result["filename"] == "photo.png"
    assert result["model"]["name"] == "tiny"
    assert result["inference_ms"] > 0


def test_classify_several_images_keeps_their_order(client: TestClient) -> None:
    files = [("files", upload(f"p{i}.png", png_bytes(size=(20 + i, 20)))) for i in range(3)]
    response = client.post("/classify", files=[("file", upload("first.png")), *files])
    assert response.status_code == 200
    assert [r["filename"] for r in response.json()["results"]] == ["first.png", "p0.png", "p1.png", "p2.png"]


def test_classify_without_images_is_422(client: TestClient) -> None:
    response = client.post("/classify", data={"x": "1"})
    assert response.status_code == 422
    assert "at least one image" in response.json()["detail"]


def test_too_many_files_is_413(client: TestClient, settings: Settings) -> None:
    files = [("files", upload()) for _ in range(settings.max_files_per_request + 1)]
    response = client.post("/classify", files=files)
    assert response.status_code == 413
    assert "per request" in response.json()["detail"]


def test_too_large_upload_is_413(settings: Settings) -> None:
    settings.max_upload_bytes = 1000
    with TestClient(create_app(settings)) as client:
        response = client.post("/classify", files={"file": upload(data=png_bytes(size=(200, 200)))})
    assert response.status_code == 413
    assert "photo.png: larger than the limit of 1000 bytes" in response.json()["detail"]


def test_photos_over_the_request_pixel_budget_are_413_before_decoding(settings: Settings) -> None:
    settings.max_request_pixels = 3000
    two = [("files", upload(data=png_bytes(size=(40, 30)))) for _ in range(2)]
    three = [*two, ("files", upload(data=png_bytes(size=(40, 30))))]
    with TestClient(create_app(settings)) as client:
        assert client.post("/classify", files=two).status_code == 200
        response = client.post("/classify", files=three)
    assert response.status_code == 413
    assert (
        response.json()["detail"] == "3 photos of 3600 pixels in all: over the limit of 3000 pixels a request"
    )


def test_an_overlay_is_at_most_the_longest_side_allowed(settings: Settings) -> None:
    settings.overlay_max_side = 64
    with TestClient(create_app(settings)) as client:
        response = client.post("/explain", files={"file": upload(data=png_bytes(size=(200, 100)))})
    assert response.status_code == 200
    assert decode_png(response.json()["overlay"]).size == (64, 32)
    assert decode_png(response.json()["heatmap"]).size == (64, 32)


#: Limits small enough that the corpus's cases over them are small files.
CORPUS_UPLOAD_BYTES = 1 << 16
CORPUS_IMAGE_PIXELS = 4_000_000
CORPUS = [
    case
    for case in corpus(max_upload_bytes=CORPUS_UPLOAD_BYTES, max_image_pixels=CORPUS_IMAGE_PIXELS)
    if not case.heavy
]


@pytest.fixture
def corpus_client(settings: Settings) -> Iterator[TestClient]:
    settings.max_upload_bytes = CORPUS_UPLOAD_BYTES
    settings.max_image_pixels = CORPUS_IMAGE_PIXELS
    with TestClient(create_app(settings)) as client:
        yield client


def displayed_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return ImageOps.exif_transpose(image).size


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_bad_images_get_their_status_on_both_routes(corpus_client: TestClient, case: BadImage) -> None:
    for route in ("/classify", "/explain"):
        response = corpus_client.post(route, files={"file": (case.filename, case.data, "image/png")})
        assert response.status_code == case.expected, (route, response.text)
        body = response.json()
        if case.expected != 200:
            # The message names the file and says what is wrong with it.
            assert body["detail"].startswith(f"{case.filename}: "), body
            continue
        if route == "/classify":
            assert body["results"][0]["filename"] == case.filename
        else:
            # The overlay is the photo as it is shown: orientation applied, the first frame.
            assert decode_png(body["overlay"]).size == displayed_size(case.data)


@pytest.mark.parametrize("method", list_cam_methods())
def test_explain_every_method(client: TestClient, method: str) -> None:
    response = client.post(
        "/explain", files={"file": upload(data=png_bytes(size=(50, 30)))}, data={"method": method}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == method
    assert body["layer"] == "relu2"
    assert body["target"]["label"] == body["label"]
    overlay = decode_png(body["overlay"])
    heatmap = decode_png(body["heatmap"])
    assert overlay.size == (50, 30)
    assert overlay.mode == "RGB"
    assert heatmap.size == (50, 30)
    assert heatmap.mode == "L"


@pytest.mark.parametrize(("target", "index"), [("metal", 2), ("4", 4)])
def test_explain_a_chosen_class(client: TestClient, target: str, index: int) -> None:
    response = client.post("/explain", files={"file": upload()}, data={"target": target})
    assert response.status_code == 200
    assert response.json()["target"] == {"index": index, "label": CLASSES[index]}


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"method": "gradcam9"}, "unknown method 'gradcam9'; valid methods: eigencam, gradcam"),
        ({"target": "banana"}, "unknown target 'banana'; valid classes: 0 (cardboard), 1 (glass)"),
        ({"target": "6"}, "unknown target '6'"),
        ({"target": "²"}, "unknown target '²'"),
        # Past Python's 4,300 digits int() raises: a 500 before.
        ({"target": "9" * 4301}, "unknown target '9999"),
        ({"layer": "fc3"}, "must output a (B, C, H, W) tensor"),
        ({"colormap": "rainbow"}, "unknown colormap 'rainbow'; valid colormaps: jet"),
        (
            {"layer": "layer4"},
            "unknown layer 'layer4'; give a submodule path of the model, e.g. one of: conv1",
        ),
    ],
)
def test_explain_refuses_unknown_options_listing_valid_ones(
    client: TestClient, form: dict[str, str], message: str
) -> None:
    response = client.post("/explain", files={"file": upload()}, data=form)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_explain_alpha_out_of_range_is_422(client: TestClient) -> None:
    response = client.post("/explain", files={"file": upload()}, data={"alpha": "1.5"})
    assert response.status_code == 422


def test_explain_another_layer(client: TestClient) -> None:
    response = client.post("/explain", files={"file": upload()}, data={"layer": "conv1"})
    assert response.status_code == 200
    assert response.json()["layer"] == "conv1"


def test_alpha_zero_overlay_is_the_photo(client: TestClient) -> None:
    data = png_bytes(size=(24, 24))
    response = client.post("/explain", files={"file": upload(data=data)}, data={"alpha": "0"})
    overlay = decode_png(response.json()["overlay"])
    assert overlay.tobytes() == Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def test_no_model_is_503_and_not_ready(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", shipped_model_path=tmp_path / "missing.pt")
    with TestClient(create_app(settings)) as client:
        response = client.post("/classify", files={"file": upload()})
        assert response.status_code == 503
        assert "no model is loaded" in response.json()["detail"]
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False


def test_concurrent_requests_share_batches_and_get_the_same_answers(settings: Settings) -> None:
    settings.batch_max_wait_ms = 200.0
    # In fp32 at every batch size: on a CPU with bf16, auto runs one photo in fp32 and batches in bf16,
    # whose rounding is not what this test is about (tests/models/test_precision.py bounds it).
    settings.inference_precision = "fp32"
    app = create_app(settings)
    images = [png_bytes(size=(20 + i, 24)) for i in range(8)]

    async def run() -> tuple[list[httpx2.Response], list[httpx2.Response]]:
        transport = httpx2.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=transport, base_url="http://t") as ac,
        ):
            together = await asyncio.gather(
                *(ac.post("/classify", files={"file": upload(data=data)}) for data in images)
            )
            alone = [await ac.post("/classify", files={"file": upload(data=data)}) for data in images]
        return together, alone

    together, alone = asyncio.run(run())
    assert all(r.status_code == 200 for r in together + alone)
    assert max(r.json()["results"][0]["batch_size"] for r in together) > 1
    for batched, single in zip(together, alone, strict=True):
        a = batched.json()["results"][0]["predictions"]
        b = single.json()["results"][0]["predictions"]
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert [p["probability"] for p in a] == pytest.approx([p["probability"] for p in b], abs=1e-5)


def calibrated_copy(source: Path, target: Path, **calibration: object) -> Path:
    from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(source)
    spec = ModelSpec.from_dict({**checkpoint.spec.to_dict(), "calibration": calibration})
    save_checkpoint(target, checkpoint.state_dict, spec)
    return target


def top(client: TestClient) -> dict[str, Any]:
    response = client.post("/classify", files={"file": upload()})
    assert response.status_code == 200
    (result,) = response.json()["results"]
    return dict(result)


def test_probabilities_are_calibrated_and_unsure_follows_the_thresholds(settings: Settings) -> None:
    assert settings.model_path is not None
    with TestClient(create_app(settings)) as client:
        plain = top(client)
    assert plain["calibrated"] is False
    assert plain["unsure"] is False
    # A temperature under 1 sharpens the same logits: same ranking, higher top probability.
    sharp = calibrated_copy(
        settings.model_path,
        settings.model_path.with_name("sharp.pt"),
        temperature=0.05,
        min_probability=1.0,
        max_energy=1e6,
        fitted_on={"split": "val"},
    )
    with TestClient(create_app(settings.model_copy(update={"model_path": sharp}))) as client:
        calibrated = top(client)
        explained = client.post("/explain", files={"file": upload()}).json()
    assert calibrated["calibrated"] is True
    assert calibrated["label"] == plain["label"]
    assert calibrated["energy"] == pytest.approx(plain["energy"], abs=1e-3)
    assert [p["label"] for p in calibrated["predictions"]] == [p["label"] for p in plain["predictions"]]
    assert calibrated["predictions"][0]["probability"] > plain["predictions"][0]["probability"]
    assert explained["predictions"] == calibrated["predictions"]
    assert explained["unsure"] is True
    # The model's own threshold (p >= 1.0) makes every answer unsure; the settings can lower it, and
    # an energy threshold under the photo's energy makes it unsure again.
    assert calibrated["unsure"] is True
    relaxed = settings.model_copy(update={"model_path": sharp, "unsure_min_probability": 0.0})
    with TestClient(create_app(relaxed)) as client:
        assert top(client)["unsure"] is False
    energy = float(plain["energy"])
    strict = relaxed.model_copy(update={"unsure_max_energy": energy - 1.0})
    with TestClient(create_app(strict)) as client:
        assert top(client)["unsure"] is True


def test_an_unparsable_form_is_a_documented_400(client: TestClient) -> None:
    response = client.post(
        "/classify",
        content=b"--not-the-boundary\r\ngarbage",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 400
    assert isinstance(response.json()["detail"], str)
    documented = client.get("/openapi.json").json()["paths"]
    for path, method in (
        ("/classify", "post"),
        ("/explain", "post"),
        ("/train", "post"),
        ("/similar", "post"),
    ):
        assert "400" in documented[path][method]["responses"], path
