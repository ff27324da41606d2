"""Fitting a checkpoint's calibration (temperature and "unsure" thresholds) on held-out photos.

The weights do not change, so neither does their sha256: a calibrated checkpoint is the same model
version, with probabilities that mean what they say.
"""

import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.calibration import (
    DEFAULT_ENERGY_QUANTILE,
    DEFAULT_MIN_PROBABILITY,
    Calibration,
    energy_threshold,
    fit_temperature,
)
from models.checkpoint import ModelSpec, save_checkpoint
from training.data import Loading, Photos
from training.evaluation import load_for_evaluation, predict
from training.report import calibration_metrics

logger = logging.getLogger(__name__)

#: Fewer held-out photos than this say too little about a model's confidence to fit a temperature.
MIN_PHOTOS = 10


class CalibrationError(ValueError):
    """The photos cannot fit a temperature: too few, or none that the model gets wrong."""


def fit_calibration(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    split: str,
    min_probability: float = DEFAULT_MIN_PROBABILITY,
    energy_quantile: float = DEFAULT_ENERGY_QUANTILE,
) -> Calibration:
    """The temperature that fits ``logits`` to ``labels`` best, and thresholds set on the same photos;
    ``fitted_on`` records the NLL and ECE before and after."""
    logits, labels = logits.float(), labels.long()
    correct = (logits.argmax(dim=1) == labels).numpy()
    if len(labels) < MIN_PHOTOS:
        raise CalibrationError(
            f"{len(labels)} {split} photos are too few to fit a temperature (at least {MIN_PHOTOS})"
        )
    if correct.all():
        # The likelihood then only grows as the temperature falls: any fit would be overconfident.
        raise CalibrationError(f"the model gets every one of the {len(labels)} {split} photos right")
    temperature = fit_temperature(logits, labels)

    def measured(scale: float) -> dict[str, float]:
        scaled = logits / scale
        top1 = scaled.softmax(dim=1).max(dim=1).values.double().numpy()
        return {"nll": float(F.cross_entropy(scaled, labels)), **calibration_metrics(top1, correct)}

    return Calibration(
        temperature=temperature,
        min_probability=min_probability,
        max_energy=energy_threshold(logits, energy_quantile),
        energy_quantile=energy_quantile,
        fitted_on={
            "split": split,
            "images": len(labels),
            "before": measured(1.0),
            "after": measured(temperature),
        },
    )


def calibrate_checkpoint(
    checkpoint_path: Path,
    photos: Photos,
    loading: Loading,
    *,
    split: str = "val",
    out: Path | None = None,
    min_probability: float = DEFAULT_MIN_PROBABILITY,
    energy_quantile: float = DEFAULT_ENERGY_QUANTILE,
) -> Calibration:
    """Fit the calibration of the checkpoint on ``photos`` and write it into the checkpoint's spec, at
    ``out`` (default: in place). The weights are written back as they were stored (fp16 stays fp16)."""
    loaded = load_for_evaluation(checkpoint_path, photos, loading)
    checkpoint = loaded.checkpoint
    predictions = predict(loaded.model, loaded.loader, device=loading.device)
    calibration = fit_calibration(
        torch.from_numpy(predictions.logits),
        torch.from_numpy(np.asarray(predictions.targets)),
        split=split,
        min_probability=min_probability,
        energy_quantile=energy_quantile,
    )
    spec = ModelSpec.from_dict({**checkpoint.spec.to_dict(), "calibration": calibration.to_dict()})
    save_checkpoint(out or checkpoint_path, checkpoint.state_dict, spec)
    fitted = calibration.fitted_on or {}
    logger.info(
        "%s: temperature %.3f on %d %s photos, ECE %.4f -> %.4f",
        checkpoint_path,
        calibration.temperature,
        len(photos.samples),
        split,
        fitted["before"]["expected_calibration_error"],
        fitted["after"]["expected_calibration_error"],
    )
    return calibration
