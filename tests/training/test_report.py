import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.checkpoint import load_checkpoint
from models.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.training.helpers import CLASS_NAMES, TINY_OPTIONS
from training.engine import TrainResult
from training.report import calibration_metrics, classification_metrics, confusion_matrix
from training.split import load_manifest


def test_calibration_matches_a_hand_computation() -> None:
    # Two bins of width 0.5. (0, 0.5]: confidences 0.3 and 0.5, one right: |0.5 - 0.4| = 0.1 for 2 images.
    # (0.5, 1]: 0.9, 0.8 and 0.7, all right: |1 - 0.8| = 0.2 for 3 images. ECE = (2 * 0.1 + 3 * 0.2) / 5.
    metrics = calibration_metrics([0.3, 0.5, 0.9, 0.8, 0.7], [True, False, True, True, True], bins=2)
    assert metrics["mean_confidence"] == pytest.approx(3.2 / 5)
    assert metrics["expected_calibration_error"] == pytest.approx(0.8 / 5)


def test_a_model_exactly_as_confident_as_it_is_right_is_calibrated() -> None:
    confidences = [0.75] * 4 + [1.0] * 2
    metrics = calibration_metrics(confidences, [True, True, True, False, True, True])
    assert metrics["expected_calibration_error"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in length"):
        calibration_metrics([0.5], [True, False])


def test_metrics_match_a_hand_computation() -> None:
    targets = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    predictions = [0, 0, 1, 1, 2, 2, 2, 0, 2]
    metrics = classification_metrics(targets, predictions, ["a", "b", "c"])
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert metrics["accuracy"] == pytest.approx(6 / 9)
    a, b, c = (metrics["per_class"][name] for name in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (b["precision"], b["recall"], b["f1"]) == (
        pytest.approx(1 / 2),
        pytest.approx(1 / 2),
        pytest.approx(1 / 2),
    )
    assert (c["precision"], c["recall"]) == (pytest.approx(3 / 4), pytest.approx(3 / 4))
    assert metrics["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert metrics["weighted_avg"]["recall"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 4 * 3 / 4) / 9)


def test_a_class_never_predicted_has_zero_precision() -> None:
    metrics = classification_metrics([0, 1], [0, 0], ["a", "b"])
    assert metrics["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert confusion_matrix([0, 1], [0, 0], 2).tolist() == [[1, 0], [1, 0]]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_run_folder_outputs(reference_run: TrainResult) -> None:
    out = reference_run.out_dir
    assert reference_run.status == "completed"
    assert reference_run.epochs_completed == 3
    history = json.loads((out / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    for record in history:
        assert set(record) == {
            "epoch",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "lr",
            "seconds",
        }
        assert 0 <= record["val_accuracy"] <= 1
        assert np.isfinite(record["train_loss"])
        assert record["seconds"] > 0
    # Warm-up over epoch 1, then cosine decay.
    assert history[0]["lr"] < history[1]["lr"]
    assert history[2]["lr"] < history[1]["lr"]
    for name in ("loss_curve.png", "accuracy_curve.png", "confusion_matrix.png"):
        width, height = _png_size(out / name)
        assert width > 100
        assert height > 100

    report = json.loads((out / "report.json").read_text())
    test_count = len(load_manifest(out / "manifest.json").select("test"))
    assert report["split"] == "test"
    assert report["num_images"] == test_count
    assert list(report["per_class"]) == list(CLASS_NAMES)
    assert sum(row["support"] for row in report["per_class"].values()) == test_count
    assert np.asarray(report["confusion_matrix"]).sum() == test_count
    assert report["accuracy"] == pytest.approx(reference_run.test_accuracy)
    assert 1 / len(CLASS_NAMES) <= report["mean_confidence"] <= 1
    assert 0 <= report["expected_calibration_error"] <= 1


def test_checkpoints_record_recipe_metrics_and_normalisation(reference_run: TrainResult) -> None:
    out = reference_run.out_dir
    best, final = load_checkpoint(out / "best.pt").spec, load_checkpoint(out / "final.pt").spec
    for spec in (best, final):
        assert spec.arch == "simple_cnn"
        assert spec.arch_kwargs == TINY_OPTIONS["model_kwargs"]
        assert spec.class_names == CLASS_NAMES
        assert spec.input_size == 32
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert spec.recipe["recipe"] == "improved"
        assert spec.recipe["optimizer"] == "adamw"
        assert spec.recipe["seed"] == 7
        assert spec.recipe["epochs"] == 3
        assert len(spec.recipe["data_digest"]) == 64
        assert {"val_accuracy", "test_accuracy", "epoch"} <= set(spec.metrics)
    assert final.metrics["epoch"] == 3
    assert best.metrics["epoch"] == reference_run.best_epoch
    assert best.metrics["val_accuracy"] == pytest.approx(reference_run.best_val_accuracy)
    assert best.metrics["test_accuracy"] == pytest.approx(reference_run.test_accuracy)
