"""``trashcam-train quantize`` (training.quantize) and serving what it writes (models.runtime): the shipped
SE-ResNet-50 quantized on real TrashNet photos, the accuracy gate, and the checks that keep an int8
network of other weights, or a damaged one, from serving."""

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.settings import Settings
from models import runtime
from models.checkpoint import file_sha256, load_checkpoint
from models.precision import choose_precision
from models.predictor import Predictor
from models.runtime import INT8, QUANTIZED_NETWORK, QUANTIZED_RECORD, RuntimeOptions
from training import quantize
from training.cli import main
from training.export import read_checksums, write_checksums
from training.split import create_manifest, load_manifest, save_manifest

SHIPPED = Settings().shipped_model_path
TRASHNET = Path(__file__).resolve().parents[2] / "data" / "trashnet-112.tar.gz"
CPU = torch.device("cpu")
PER_CLASS = 8
#: What a compiled model serves in without its int8 network: this CPU's precision, without a layout.
UNQUANTIZED = choose_precision(CPU).name.split("+")[0]


def trashnet_folder(root: Path) -> Path:
    """``PER_CLASS`` real TrashNet photos of each class, in a folder per class."""
    taken: dict[str, int] = {}
    with tarfile.open(TRASHNET) as tar:
        for member in tar.getmembers():
            label = Path(member.name).parent.name
            if member.isfile() and member.name.endswith(".jpg") and taken.get(label, 0) < PER_CLASS:
                taken[label] = taken.get(label, 0) + 1
                data = tar.extractfile(member)
                assert data is not None
                (root / label).mkdir(parents=True, exist_ok=True)
                (root / label / Path(member.name).name).write_bytes(data.read())
    assert sum(taken.values()) == 6 * PER_CLASS
    return root


@pytest.fixture(scope="module")
def photos_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trashnet_folder(tmp_path_factory.mktemp("trashnet"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory, photos_folder: Path) -> Path:
    """The photos split 70/13/17 within each class, as the shipped model's data was: 6 of each class to
    calibrate on, 1 to test."""
    folder = tmp_path_factory.mktemp("split")
    split, _ = create_manifest(photos_folder, folder / "data", seed=0, fractions=(0.7, 0.13, 0.17))
    save_manifest(split, folder / "manifest.json")
    return folder / "manifest.json"


def command(checkpoint: Path, manifest: Path, photos: Path) -> list[str]:
    return [
        "quantize",
        f"--checkpoint={checkpoint}",
        f"--manifest={manifest}",
        f"--data={photos}",
        "--workers=0",
    ]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, manifest: Path, photos_folder: Path) -> Path:
    """A copy of the shipped checkpoint with the int8 network the command wrote beside it."""
    folder = tmp_path_factory.mktemp("quantized")
    shutil.copy(SHIPPED, folder / "model.pt")
    write_checksums(folder)  # as an exported folder has
    # Six test photos cannot tell half a point from noise: the gate is checked on its own below.
    assert main([*command(folder / "model.pt", manifest, photos_folder), "--max-drop=100"]) == 0
    return folder


def test_under_accuracy_control_the_validation_photos_keep_their_top1(
    tmp_path: Path, manifest: Path, photos_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-val-drop quantizes with NNCF's accuracy control on the validation photos, and says so in the
    record; a drop of 0 keeps the validation top-1 of fp32."""
    folder = tmp_path / "controlled"
    folder.mkdir()
    shutil.copy(SHIPPED, folder / "model.pt")
    validated: list[float] = []
    measure = quantize._validation_top1

    def recorded(compiled: object, items: object) -> tuple[float, list[float]]:
        top1, per_item = measure(compiled, items)  # type: ignore[arg-type]
        validated.append(top1)
        return top1, per_item

    monkeypatch.setattr(quantize, "_validation_top1", recorded)
    args = [*command(folder / "model.pt", manifest, photos_folder), "--max-drop=100", "--max-val-drop=0"]
    assert main(args) == 0
    record = json.loads((folder / QUANTIZED_RECORD).read_text())
    val_photos = len(load_manifest(manifest).select("val"))
    assert record["accuracy_control"] == {"split": "val", "photos": val_photos, "max_drop_points": 0.0}
    # NNCF validated the fp32 network first, then the int8 ones; the one kept is no worse.
    assert len(validated) >= 2
    assert validated[-1] >= validated[0]


def served(folder: Path, cache: Path, *, int8: bool = True) -> Predictor:
    return Predictor.from_checkpoint(
        str(folder / "model.pt"),
        name="shipped",
        version="v1",
        device=CPU,
        precision=choose_precision(CPU, "auto"),
        runtime=RuntimeOptions("openvino", cache, streams=1, threads=2, int8=int8),
    )


def images(folder: Path) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted(folder.glob("*/*.jpg"))]


def test_the_command_writes_an_int8_network_and_its_record(quantized: Path, manifest: Path) -> None:
    record = json.loads((quantized / QUANTIZED_RECORD).read_text())
    assert record["model_sha256"] == load_checkpoint(quantized / "model.pt").sha256
    split = load_manifest(manifest)
    assert record["calibration"] == {"split": "train", "photos": len(split.select("train")), "seed": 0}
    assert record["test_photos"] == {"all": len(split.select("test"))} == {"all": 6}
    assert set(record["top1_test"]) == {"fp32", "int8"}
    assert (quantized / QUANTIZED_NETWORK).is_file()
    # Weights of 8 bits: about a quarter of the fp32 network's 4 bytes a weight (SE-ResNet-50: 26M).
    assert (quantized / QUANTIZED_NETWORK).with_suffix(".bin").stat().st_size < 40e6
    assert not list(quantized.glob(".int8-*"))  # no staging folder left
    # The folder's checksums list the new files too.
    sums = read_checksums(quantized)
    assert set(sums) == {"model.pt", "int8.xml", "int8.bin", "int8.json"}
    assert all(file_sha256(quantized / name) == digest for name, digest in sums.items())


def test_the_int8_network_serves_and_answers_as_eager(
    quantized: Path, photos_folder: Path, tmp_path: Path
) -> None:
    int8 = served(quantized, tmp_path)
    assert (int8.backend, int8.served_precision) == ("openvino", INT8)
    eager = Predictor.from_checkpoint(str(quantized / "model.pt"), name="e", version="v1", device=CPU)
    photos = images(photos_folder)
    got, expected = int8.classify(photos), eager.classify(photos)
    agree = got.probabilities.argmax(1) == expected.probabilities.argmax(1)
    assert float(agree.float().mean()) >= 0.9
    assert float((got.probabilities - expected.probabilities).abs().max()) < 0.2
    # Grad-CAM from the int8 network's feature map, against eager's backward pass.
    heat = int8.explain(photos[:6], targets=[0] * 6)
    reference = eager.explain(photos[:6], targets=[0] * 6)
    for ours, theirs in zip(heat.heatmaps, reference.heatmaps, strict=True):
        pair = torch.stack([ours.flatten().double(), theirs.flatten().double()])
        assert float(torch.corrcoef(pair)[0, 1]) >= 0.95
    # What must be exact (the fingerprints' fp32 index) still runs the fp32 conversion.
    assert int8.fingerprint(photos[:4]).hashes == eager.fingerprint(photos[:4]).hashes


def test_int8_is_not_served_when_turned_off(quantized: Path, tmp_path: Path) -> None:
    assert served(quantized, tmp_path, int8=False).served_precision != INT8


def test_an_int8_network_of_other_weights_or_damaged_is_not_served(
    quantized: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tmp_path / "other"
    shutil.copytree(quantized, other)
    record = json.loads((other / QUANTIZED_RECORD).read_text())
    (other / QUANTIZED_RECORD).write_text(json.dumps({**record, "model_sha256": "0" * 64}))
    with caplog.at_level(logging.WARNING, logger="models.runtime"):
        assert served(other, tmp_path / "cache").served_precision != INT8
    assert "made from other weights" in caplog.text

    damaged = tmp_path / "damaged"
    shutil.copytree(quantized, damaged)
    weights = (damaged / QUANTIZED_NETWORK).with_suffix(".bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="models.runtime"):
        predictor = served(damaged, tmp_path / "cache")
    assert (predictor.backend, predictor.served_precision) == (
        "openvino",
        choose_precision(CPU).name.split("+")[0],
    )
    assert "not the file its record int8.json names" in caplog.text


def test_an_int8_network_that_answers_unlike_eager_is_not_served(
    quantized: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checked = runtime._answers_as_eager

    def int8_answers_otherwise(compiled: runtime.CompiledNetwork, *args: object) -> bool:
        return compiled.precision != INT8 and checked(compiled, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "_answers_as_eager", int8_answers_otherwise)
    with caplog.at_level(logging.WARNING, logger="models.runtime"):
        predictor = served(quantized, tmp_path)
    assert (predictor.backend, predictor.served_precision) == (
        "openvino",
        choose_precision(CPU).name.split("+")[0],
    )
    assert "the int8 network does not serve (its logits differ from eager's on a probe input)" in caplog.text


def test_the_gate_refuses_an_int8_network_that_loses_accuracy() -> None:
    accuracy = quantize.Accuracy(
        fp32={"all": 0.80, "trashnet": 0.90, "extra": 0.70},
        int8={"all": 0.797, "trashnet": 0.893, "extra": 0.702},
        photos={"all": 1000, "trashnet": 430, "extra": 570},
    )
    assert accuracy.drops() == pytest.approx({"all": 0.3, "trashnet": 0.7, "extra": -0.2})
    assert accuracy.refused(0.5) == ["trashnet: 90.00% -> 89.30% (+0.70 points lost)"]
    assert accuracy.refused(1.0) == []


def test_a_refused_network_is_not_written_and_the_command_says_why(
    manifest: Path,
    photos_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutil.copy(SHIPPED, tmp_path / "model.pt")
    real_top1 = quantize._top1
    calls: list[int] = []

    def int8_gets_none_right(compiled: object, batches: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
        calls.append(1)
        right = real_top1(compiled, batches, labels)
        return right if len(calls) == 1 else np.zeros_like(right)

    monkeypatch.setattr(quantize, "_top1", int8_gets_none_right)
    with caplog.at_level(logging.ERROR):
        assert main(command(tmp_path / "model.pt", manifest, photos_folder)) == 2
    assert "int8 loses more than 0.5 points of top-1, not written: all:" in caplog.text
    assert not (tmp_path / QUANTIZED_RECORD).exists()
    assert not (tmp_path / QUANTIZED_NETWORK).exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--photos=0", "--photos must be at least 1"),
        ("--max-drop=-1", "--max-drop is"),
        ("--max-val-drop=-1", "--max-val-drop is"),
    ],
)
def test_bad_arguments_are_refused(flag: str, message: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["quantize", f"--checkpoint={SHIPPED}", "--data=unused", flag]) == 2
    assert message in caplog.text


def test_an_image_decodes_for_the_fixture() -> None:
    # The fixture's photos are real JPEGs (guards the test data, not the code).
    with tarfile.open(TRASHNET) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        data = tar.extractfile(member)
        assert data is not None
        assert Image.open(io.BytesIO(data.read())).size[0] > 0
