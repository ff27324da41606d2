"""Evaluating a model on a split: predictions, loss, and the test report.

Preprocessing always comes from the checkpoint spec (``models.transforms.build_eval_transform``), the
same as the API and the worker use.
"""

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from models.calibration import Calibration, energy_score
from models.checkpoint import Checkpoint, ModelSpec, load_checkpoint
from models.checkpoint import build_model as build_checkpoint_model
from models.files import write_json
from models.precision import autocast
from models.transforms import build_eval_transform
from training.data import Batches, DataError, ImageDataset, Loading, Photos, Sample, make_loader
from training.report import (
    FloatArray,
    IntArray,
    calibration_metrics,
    classification_metrics,
    plot_confusion_matrix,
    plot_risk_coverage,
    risk_coverage,
)
from training.run_folder import CONFUSION_FILE, REPORT_FILE, RISK_COVERAGE_FILE

logger = logging.getLogger(__name__)

#: Called after each batch with (step, steps, running metrics).
StepCallback = Callable[[int, int, Mapping[str, float]], None]

#: The evaluation report a run folder holds (and a registered model beside its weights).


@dataclass(frozen=True)
class Predictions:
    """Targets, predicted classes, their (uncalibrated) probabilities and the logits for every image, and
    the mean cross-entropy."""

    targets: IntArray
    predictions: IntArray
    confidences: FloatArray
    logits: FloatArray
    loss: float

    @property
    def accuracy(self) -> float:
        return float((self.targets == self.predictions).mean()) if len(self.targets) else 0.0


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Batches,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    on_step: StepCallback | None = None,
) -> Predictions:
    """Run ``model`` in eval mode over ``loader``. The loss is plain cross-entropy (no label smoothing),
    so validation curves compare across recipes."""
    model.eval()
    targets, predictions, confidences, all_logits = [], [], [], []
    loss_sum, seen, correct = 0.0, 0, 0
    steps = len(loader)
    for step, (images, labels) in enumerate(loader, start=1):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        confidence, predicted = logits.softmax(dim=1).max(dim=1)
        seen += len(labels)
        correct += int((predicted == labels).sum())
        targets.append(labels.cpu())
        predictions.append(predicted.cpu())
        confidences.append(confidence.cpu())
        all_logits.append(logits.cpu())
        if on_step is not None:
            on_step(step, steps, {"loss": loss_sum / seen, "accuracy": correct / seen})
    return Predictions(
        targets=torch.cat(targets).numpy().astype(np.int64) if targets else np.zeros(0, dtype=np.int64),
        predictions=torch.cat(predictions).numpy().astype(np.int64)
        if predictions
        else np.zeros(0, dtype=np.int64),
        confidences=torch.cat(confidences).numpy().astype(np.float64)
        if confidences
        else np.zeros(0, dtype=np.float64),
        logits=torch.cat(all_logits).numpy().astype(np.float64) if all_logits else np.zeros((0, 0)),
        loss=loss_sum / seen if seen else float("nan"),
    )


def eval_loader(
    spec: ModelSpec, root: Path, samples: Sequence[Sample], loading: Loading
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A loader over ``samples`` preprocessed by the spec's eval transform."""
    dataset = ImageDataset(root, samples, build_eval_transform(spec))
    return make_loader(dataset, batch_size=loading.batch_size, device=loading.device, workers=loading.workers)


def remap_labels(
    samples: Sequence[Sample], data_classes: Sequence[str], model_classes: Sequence[str]
) -> list[Sample]:
    """Relabel samples from the data set's class order to the model's, by class name."""
    missing = [name for name in data_classes if name not in model_classes]
    if missing:
        raise DataError(f"data set classes {missing} are not classes of the model {list(model_classes)}")
    index = {name: model_classes.index(name) for name in data_classes}
    return [(path, index[data_classes[label]]) for path, label in samples]


def build_report(
    predictions: Predictions, spec: ModelSpec, *, sources: Sequence[str] | None = None, **context: Any
) -> dict[str, Any]:
    """The report: ``context`` (split, checkpoint, data set...), loss and the classification metrics,
    and the same per source when ``sources`` names each image's."""
    metrics = classification_metrics(predictions.targets, predictions.predictions, spec.class_names)
    report = {
        **context,
        "loss": predictions.loss,
        "class_names": list(spec.class_names),
        **metrics,
        **calibrated_metrics(predictions, Calibration.from_dict(spec.calibration)),
    }
    if sources is not None:
        report["per_source"] = per_source_metrics(predictions, spec.class_names, sources)
    return report


def calibrated_metrics(predictions: Predictions, calibration: Calibration) -> dict[str, Any]:
    """Mean top-1 probability and ECE of the probabilities the model reports (temperature-scaled when it
    is calibrated) and of the raw ones, the "unsure" rule's share and accuracy, and the risk-coverage
    table."""
    correct = predictions.targets == predictions.predictions
    logits = torch.from_numpy(predictions.logits).float()
    if len(logits):
        confidences = calibration.probabilities(logits).max(dim=1).values.double().numpy()
        energies = energy_score(logits).double().numpy()
    else:
        confidences, energies = np.zeros(0), np.zeros(0)
    unsure = np.array([calibration.is_unsure(p, e) for p, e in zip(confidences, energies, strict=True)])
    sure = ~unsure if len(unsure) else np.zeros(0, dtype=np.bool_)
    return {
        **calibration_metrics(confidences, correct),
        "temperature": calibration.temperature,
        "uncalibrated": calibration_metrics(predictions.confidences, correct),
        "unsure": {
            "min_probability": calibration.min_probability,
            "max_energy": calibration.max_energy,
            "share": float(unsure.mean()) if len(unsure) else 0.0,
            "accuracy_when_sure": float(correct[sure].mean()) if sure.any() else 0.0,
            "accuracy_when_unsure": float(correct[unsure].mean()) if unsure.any() else 0.0,
        },
        "risk_coverage": risk_coverage(confidences, correct),
    }


def per_source_metrics(
    predictions: Predictions, class_names: Sequence[str], sources: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Accuracy, macro recall (over the classes the source has) and confusion matrix per source."""
    tags = np.asarray(sources)
    if len(tags) != len(predictions.targets):
        raise ValueError(f"{len(tags)} source tags for {len(predictions.targets)} images")
    table: dict[str, dict[str, Any]] = {}
    for source in sorted(set(sources)):
        chosen = tags == source
        metrics = classification_metrics(
            predictions.targets[chosen], predictions.predictions[chosen], class_names
        )
        recalls = [row["recall"] for row in metrics["per_class"].values() if row["support"] > 0]
        table[source] = {
            "accuracy": metrics["accuracy"],
            "num_images": metrics["num_images"],
            "macro_recall": float(np.mean(recalls)),
            "confusion_matrix": metrics["confusion_matrix"],
        }
    return table


def write_report(report: Mapping[str, Any], out_dir: Path) -> None:
    """``report.json``, ``confusion_matrix.png`` and ``risk_coverage.png`` in ``out_dir``."""
    write_json(out_dir / REPORT_FILE, dict(report))
    matrix = np.asarray(report["confusion_matrix"], dtype=np.int64)
    plot_confusion_matrix(matrix, report["class_names"], out_dir / CONFUSION_FILE)
    if report.get("risk_coverage"):
        split = report.get("split", "")
        plot_risk_coverage({str(split or "photos"): report["risk_coverage"]}, out_dir / RISK_COVERAGE_FILE)


@dataclass(frozen=True)
class Loaded:
    """A checkpoint ready to run over samples: its record, its model on the device, and a loader over
    the samples relabelled to its class order."""

    checkpoint: Checkpoint
    model: nn.Module
    samples: list[Sample]
    loader: DataLoader[tuple[torch.Tensor, int]]


def load_for_evaluation(checkpoint_path: Path, photos: Photos, loading: Loading) -> Loaded:
    """Load and verify ``checkpoint_path`` and the photos it is to run over, their labels in its classes'
    order, preprocessed by its spec's eval transform."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_checkpoint_model(checkpoint, source=str(checkpoint_path)).to(loading.device)
    relabelled = remap_labels(photos.samples, photos.classes, checkpoint.spec.class_names)
    loader = eval_loader(checkpoint.spec, photos.root, relabelled, loading)
    return Loaded(checkpoint, model, relabelled, loader)


def evaluate_checkpoint(
    checkpoint_path: Path,
    photos: Photos,
    loading: Loading,
    *,
    sources: Sequence[str] | None = None,
    on_step: StepCallback | None = None,
    **context: Any,
) -> dict[str, Any]:
    """Evaluate a ``models.checkpoint`` file on ``photos``, per source too when ``sources`` tags each
    photo; ``on_step`` hears of every batch."""
    loaded = load_for_evaluation(checkpoint_path, photos, loading)
    checkpoint = loaded.checkpoint
    predictions = predict(loaded.model, loaded.loader, device=loading.device, on_step=on_step)
    logger.info("%s: accuracy %.4f on %d images", checkpoint_path, predictions.accuracy, len(photos.samples))
    return build_report(
        predictions,
        checkpoint.spec,
        sources=sources,
        checkpoint=str(checkpoint_path),
        checkpoint_sha256=checkpoint.sha256,
        **context,
    )
