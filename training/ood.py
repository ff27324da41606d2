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
from models.ood import DEFAULT_BANK_PHOTOS, DEFAULT_K, OOD_FILE, ROUTE_BASE_SHARE, FeatureBank
from models.precision import choose_precision
from training.data import Loading, Photos
from training.features import extract_features

logger = logging.getLogger(__name__)


def choose_route_margin(bank: FeatureBank, base_val_embeddings: np.ndarray) -> float:
    """The routing margin at which the model answers :data:`ROUTE_BASE_SHARE` of its base's validation
    photos (their pooled features ``base_val_embeddings``, as the model sees them) itself."""
    return float(np.quantile(bank.routing_margins(base_val_embeddings), ROUTE_BASE_SHARE))


def build_feature_bank(
    checkpoint_path: Path,
    *,
    train: Photos,
    val: Photos,
    loading: Loading,
    sources: Sequence[str] | None = None,
    own_photos: int | None = None,
    base_val_photos: int = 0,
    route: bool = False,
    k: int = DEFAULT_K,
    max_photos: int = DEFAULT_BANK_PHOTOS,
    seed: int = 0,
    distance_quantile: float = DEFAULT_DISTANCE_QUANTILE,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
) -> FeatureBank:
    """Build the bank from the ``train`` photos (``sources`` names each one's source, for the record; at
    most ``max_photos`` of them, drawn with ``seed``), choose the rule on the ``val`` photos, write the
    bank beside the checkpoint and the rule into its calibration.

    For a fine-tune, the first ``own_photos`` of ``train`` are its own data's and the rest its base's, and
    the last ``base_val_photos`` of ``val`` are the base's validation photos; with ``route``, the routing
    margin is chosen on those so that the model answers :data:`ROUTE_BASE_SHARE` of them itself."""
    # The precision the service infers in, so that the distances it measures are the bank's own.
    amp = choose_precision(loading.device).dtype

    def features(photos: Photos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        extracted = extract_features(checkpoint_path, photos, loading, amp_dtype=amp)
        return extracted.logits, extracted.embeddings, extracted.labels

    if not train.samples or not val.samples:
        raise ValueError("a feature bank needs training photos and validation photos")
    checkpoint = load_checkpoint(checkpoint_path)
    samples = list(train.samples)
    named = list(sources) if sources is not None else ["train"] * len(samples)
    own = len(samples) if own_photos is None else own_photos
    if len(samples) > max_photos:
        chosen = np.sort(np.random.default_rng(seed).choice(len(samples), max_photos, replace=False))
        samples, named = [samples[i] for i in chosen], [named[i] for i in chosen]
        own = int((chosen < own).sum())
    _, train_embeddings, _ = features(replace(train, samples=samples))
    counts: dict[str, int] = {}
    for source in named:
        counts[source] = counts.get(source, 0) + 1
    bank = FeatureBank.from_embeddings(
        train_embeddings,
        model_sha256=checkpoint.sha256,
        k=min(k, len(samples)),
        sources=counts,
        own_photos=None if own_photos is None else own,
    )
    logits, embeddings, labels = features(val)
    route_margin = None
    answered = np.ones(len(val.samples), dtype=bool)
    if route and bank.routes and base_val_photos > 0:
        route_margin = choose_route_margin(bank, embeddings[len(val.samples) - base_val_photos :])
        to_base = replace(bank, route_margin=route_margin).routes_to_base(embeddings)
        assert to_base is not None
        answered = ~to_base
        own_val = len(val.samples) - base_val_photos
        logger.info(
            "%s: served beside its base, routing margin %.4f: it answers %d of the %d validation photos of "
            "its data and %d of the base's %d itself",
            checkpoint_path,
            route_margin,
            answered[:own_val].sum(),
            own_val,
            answered[own_val:].sum(),
            base_val_photos,
        )
    # A model served beside its base says "sure" only of the photos it answers: its rule is chosen on those.
    calibration = Calibration.from_dict(checkpoint.spec.calibration)
    logits_t = torch.from_numpy(logits[answered])
    probabilities = calibration.probabilities(logits_t).numpy()
    distances = bank.scores(embeddings[answered])
    validation = ValidationScores(
        confidences=probabilities.max(axis=1).astype(np.float32),
        correct=probabilities.argmax(axis=1) == labels[answered],
        energies=energy_score(logits_t).numpy(),
        distances=distances,
    )
    calibration = replace(
        calibration,
        max_distance=float(np.quantile(distances, distance_quantile)),
        distance_quantile=distance_quantile,
    ).for_target(target_accuracy, validation)
    bank = replace(bank, validation=validation, route_margin=route_margin)
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
