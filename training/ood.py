"""Storing what a model needs to tell photos unlike its training photos (``ood.npz``) and choosing its
"sure" rule on the validation photos.

The training photos' pooled features become the feature bank; the validation photos' features, scored
against it, set ``max_distance`` (a quantile, as the energy's); the probability threshold is then chosen
on the validation photos that pass, as the lowest at which the sure ones are ``target_accuracy`` right.
Both go into the checkpoint's calibration (its weights, and so its digest, do not change).
"""

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.calibration import (
    DEFAULT_DISTANCE_QUANTILE,
    DEFAULT_TARGET_ACCURACY,
    MIN_SURE_PHOTOS,
    Calibration,
    ValidationScores,
    energy_score,
)
from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from models.ood import DEFAULT_BANK_PHOTOS, DEFAULT_K, OOD_FILE, FeatureBank
from models.precision import choose_precision
from training.data import Sample
from training.features import extract_features

logger = logging.getLogger(__name__)


def build_feature_bank(
    checkpoint_path: Path,
    *,
    root: Path,
    train: Sequence[Sample],
    val: Sequence[Sample],
    data_classes: Sequence[str],
    device: torch.device,
    sources: Sequence[str] | None = None,
    train_root: Path | None = None,
    k: int = DEFAULT_K,
    max_photos: int = DEFAULT_BANK_PHOTOS,
    seed: int = 0,
    distance_quantile: float = DEFAULT_DISTANCE_QUANTILE,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    batch_size: int = 64,
    workers: int | None = None,
) -> FeatureBank:
    """Build the bank from the ``train`` photos (under ``train_root``, default ``root``; ``sources``
    names each one's source, for the record; at most ``max_photos`` of them, drawn with ``seed``), choose
    the rule on the ``val`` photos, write the bank beside the checkpoint and the rule into its
    calibration."""
    # The precision the service infers in, so that the distances it measures are the bank's own.
    amp = choose_precision(device).dtype

    def features(samples: Sequence[Sample], folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        extracted = extract_features(
            checkpoint_path,
            root=folder,
            samples=samples,
            data_classes=data_classes,
            device=device,
            batch_size=batch_size,
            workers=workers,
            amp_dtype=amp,
        )
        return extracted.logits, extracted.embeddings, extracted.labels

    if not train or not val:
        raise ValueError("a feature bank needs training photos and validation photos")
    checkpoint = load_checkpoint(checkpoint_path)
    named = list(sources) if sources is not None else ["train"] * len(train)
    if len(train) > max_photos:
        chosen = np.sort(np.random.default_rng(seed).choice(len(train), max_photos, replace=False))
        train, named = [train[i] for i in chosen], [named[i] for i in chosen]
    _, train_embeddings, _ = features(train, train_root or root)
    counts: dict[str, int] = {}
    for source in named:
        counts[source] = counts.get(source, 0) + 1
    bank = FeatureBank.from_embeddings(
        train_embeddings, model_sha256=checkpoint.sha256, k=min(k, len(train)), sources=counts
    )
    logits, embeddings, labels = features(val, root)
    calibration = Calibration.from_dict(checkpoint.spec.calibration)
    logits_t = torch.from_numpy(logits)
    probabilities = calibration.probabilities(logits_t).numpy()
    distances = bank.scores(embeddings)
    validation = ValidationScores(
        confidences=probabilities.max(axis=1).astype(np.float32),
        correct=probabilities.argmax(axis=1) == labels,
        energies=energy_score(logits_t).numpy(),
        distances=distances,
    )
    calibration = replace(
        calibration,
        max_distance=float(np.quantile(distances, distance_quantile)),
        distance_quantile=distance_quantile,
    ).for_target(target_accuracy, validation)
    bank = FeatureBank(bank.model_sha256, bank.embeddings, bank.k, bank.sources, validation)
    bank.save(checkpoint_path.parent / OOD_FILE)
    spec = ModelSpec.from_dict({**checkpoint.spec.to_dict(), "calibration": calibration.to_dict()})
    save_checkpoint(checkpoint_path, checkpoint.state_dict, spec)
    if calibration.min_probability >= 1.0:
        logger.warning(
            "%s: no probability threshold makes %d%% of the validation photos' sure answers right (at "
            "least %d photos): nothing will be sure",
            checkpoint_path,
            round(100 * target_accuracy),
            MIN_SURE_PHOTOS,
        )
    sure = (validation.confidences >= calibration.min_probability) & ~calibration.unlike_training_all(
        validation.energies, validation.distances
    )
    logger.info(
        "%s: feature bank of %d photos (k=%d), max distance %.4f; sure on %.1f%% of %d validation photos, "
        "%.1f%% of them right (target %.0f%%)",
        checkpoint_path,
        len(bank),
        bank.k,
        calibration.max_distance,
        100 * sure.mean(),
        len(sure),
        100 * validation.correct[sure].mean() if sure.any() else 0.0,
        100 * target_accuracy,
    )
    return bank
