"""Calibrated probabilities and the "unsure" answer.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the logits by
one scalar ``T`` fitted on held-out photos to minimise their negative log-likelihood: the ranking of the
classes, and so the accuracy, is unchanged, while the probabilities come to mean what they say.

A prediction is *unsure* when its calibrated top-1 probability is under ``min_probability``, or when the
photo looks unlike the training data: its energy score (Liu et al., "Energy-based Out-of-distribution
Detection", 2020), ``-logsumexp(logits)`` of the raw logits, is over ``max_energy``, or its feature
distance to the training photos (:mod:`models.ood`) is over ``max_distance``. Higher energy or distance
means less like anything the network has learned; each threshold is a quantile of the validation photos'
scores, so that share of in-distribution photos passes the test. ``min_probability`` is then chosen on the
validation photos that pass, as the lowest at which the sure ones are ``target_accuracy`` right.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

#: The temperature is searched in [1/LIMIT, LIMIT]: a wider one means the logits carry no signal.
TEMPERATURE_LIMIT = 100.0
#: The probability threshold a newly fitted calibration starts with; settings may override it.
DEFAULT_MIN_PROBABILITY = 0.5
#: Share of validation photos whose energy is within ``max_energy``.
DEFAULT_ENERGY_QUANTILE = 0.95

#: The share of sure answers that must be right on the validation photos, by default.
DEFAULT_TARGET_ACCURACY = 0.95
#: Share of validation photos whose feature distance is within ``max_distance``.
DEFAULT_DISTANCE_QUANTILE = 0.95
#: Fewer sure validation photos than this say too little about how often sure answers are right.
MIN_SURE_PHOTOS = 30

#: The reasons a prediction is unsure, as the API and the metrics name them.
LOW_CONFIDENCE = "low confidence"
OUT_OF_DISTRIBUTION = "unlike the training photos"
UNSURE_REASONS = (LOW_CONFIDENCE, OUT_OF_DISTRIBUTION)


@dataclass(frozen=True)
class Thresholds:
    """Thresholds that override a model's own (``None``: the model's)."""

    min_probability: float | None = None
    max_energy: float | None = None
    max_distance: float | None = None
    #: Choose ``min_probability`` for this share of sure validation answers right (where the model stores
    #: its validation scores and ``min_probability`` is not given).
    target_accuracy: float | None = None


@dataclass(frozen=True)
class ValidationScores:
    """Each validation photo's calibrated top-1 probability, whether the model got it right, its energy
    and its feature distance: enough to choose the probability threshold again for another target."""

    confidences: npt.NDArray[np.float32]
    correct: npt.NDArray[np.bool_]
    energies: npt.NDArray[np.float32]
    distances: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        if not len(self.confidences) == len(self.correct) == len(self.energies) == len(self.distances):
            raise ValueError("validation scores need one of each per photo")


@dataclass(frozen=True)
class Calibration:
    """How a model's logits become the probabilities it reports and the "unsure" flag it sets.

    The default (temperature 1, no thresholds) is an uncalibrated model that is never unsure.
    """

    temperature: float = 1.0
    min_probability: float = 0.0
    max_energy: float | None = None
    energy_quantile: float | None = None
    max_distance: float | None = None
    distance_quantile: float | None = None
    #: The share of sure validation answers that ``min_probability`` was chosen to get right (None: set
    #: by hand, not chosen).
    target_accuracy: float | None = None
    #: What the fit saw (split, number of photos, NLL and ECE before and after), for the record.
    fitted_on: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not 0 <= self.min_probability <= 1:
            raise ValueError(f"min_probability must be in [0, 1], got {self.min_probability}")
        for name in ("max_energy", "max_distance"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")

    @property
    def fitted(self) -> bool:
        return self.fitted_on is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Calibration":
        if not data:
            return cls()

        def optional(name: str) -> float | None:
            value = data.get(name)
            return None if value is None else float(value)

        return cls(
            temperature=float(data.get("temperature", 1.0)),
            min_probability=float(data.get("min_probability", 0.0)),
            max_energy=optional("max_energy"),
            energy_quantile=optional("energy_quantile"),
            max_distance=optional("max_distance"),
            distance_quantile=optional("distance_quantile"),
            target_accuracy=optional("target_accuracy"),
            fitted_on=dict(data["fitted_on"]) if data.get("fitted_on") else None,
        )

    def with_thresholds(
        self, thresholds: Thresholds, validation: ValidationScores | None = None
    ) -> "Calibration":
        """A copy with the thresholds that ``thresholds`` sets. Its ``target_accuracy`` chooses
        ``min_probability`` on ``validation`` (when given, and ``min_probability`` is not)."""
        changes = {
            key: value
            for key, value in asdict(thresholds).items()
            if value is not None and key != "target_accuracy"
        }
        changed = replace(self, **changes)
        if thresholds.min_probability is not None:
            # Set by hand: no longer the threshold chosen for the model's target.
            return replace(changed, target_accuracy=None)
        target = thresholds.target_accuracy
        if target is None or validation is None:
            return changed
        return changed.for_target(target, validation)

    def for_target(self, target: float, validation: ValidationScores) -> "Calibration":
        """A copy whose ``min_probability`` is the lowest at which the validation photos that are not
        unlike the training photos (by this calibration's energy and distance thresholds) are sure and
        ``target`` right."""
        passing = ~self.unlike_training_all(validation.energies, validation.distances)
        chosen = choose_min_probability(validation.confidences[passing], validation.correct[passing], target)
        return replace(self, min_probability=chosen, target_accuracy=target)

    def unlike_training_all(
        self, energies: npt.NDArray[np.floating], distances: npt.NDArray[np.floating] | None
    ) -> npt.NDArray[np.bool_]:
        """:meth:`unlike_training` of many photos at once."""
        unlike = np.zeros(len(energies), dtype=bool)
        if self.max_energy is not None:
            unlike |= np.asarray(energies) > self.max_energy
        if self.max_distance is not None and distances is not None:
            unlike |= np.asarray(distances) > self.max_distance
        return unlike

    def probabilities(self, logits: Tensor) -> Tensor:
        """Calibrated class probabilities (B, classes) in fp32."""
        return (logits.float() / self.temperature).softmax(dim=1)

    def unlike_training(self, energy: float, distance: float | None = None) -> bool:
        """Whether ``energy`` or the feature ``distance`` (None: not measured) is over its threshold."""
        return (self.max_energy is not None and energy > self.max_energy) or (
            self.max_distance is not None and distance is not None and distance > self.max_distance
        )

    def unsure_reasons(self, probability: float, energy: float, distance: float | None = None) -> list[str]:
        """Why a prediction should go to a person: ``low confidence`` (calibrated top-1 ``probability``
        under the threshold) and/or ``unlike the training photos`` (``energy`` or ``distance`` over its
        threshold)."""
        reasons = []
        if probability < self.min_probability:
            reasons.append(LOW_CONFIDENCE)
        if self.unlike_training(energy, distance):
            reasons.append(OUT_OF_DISTRIBUTION)
        return reasons

    def is_unsure(self, probability: float, energy: float, distance: float | None = None) -> bool:
        """The rule: calibrated top-1 ``probability`` under its threshold, or ``energy`` or ``distance``
        over its own."""
        return bool(self.unsure_reasons(probability, energy, distance))


def energy_score(logits: Tensor) -> Tensor:
    """``-logsumexp`` of the raw logits per row (B,): the higher, the less like the training data."""
    return -torch.logsumexp(logits.float(), dim=1)


def fit_temperature(logits: Tensor, labels: Tensor, *, steps: int = 100) -> float:
    """The temperature that minimises the mean cross-entropy of ``logits / T`` against ``labels``.

    The NLL is convex in ``1/T``, so a bounded golden-section search on ``log T`` finds its minimum
    without a learning rate to tune or a step that can diverge.
    """
    if len(logits) == 0:
        raise ValueError("cannot fit a temperature on no photos")
    logits, labels = logits.detach().float(), labels.detach().long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    low, high = -math.log(TEMPERATURE_LIMIT), math.log(TEMPERATURE_LIMIT)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(steps):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return math.exp((low + high) / 2)


def energy_threshold(logits: Tensor, quantile: float = DEFAULT_ENERGY_QUANTILE) -> float:
    """The ``quantile`` of the energy scores of ``logits``: photos like these pass below it."""
    if len(logits) == 0:
        raise ValueError("cannot set an energy threshold on no photos")
    return float(torch.quantile(energy_score(logits), quantile))


def choose_min_probability(
    confidences: Sequence[float] | npt.NDArray[np.floating],
    correct: Sequence[bool] | npt.NDArray[np.bool_],
    target: float,
    *,
    min_photos: int = MIN_SURE_PHOTOS,
) -> float:
    """The lowest confidence threshold at which the photos at or above it are at least ``target`` right
    (so the most of them are answered), counting only cuts with at least ``min_photos`` photos above;
    1.0 when there is none (hardly anything is then sure)."""
    confidence = np.asarray(confidences, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    if confidence.shape != right.shape:
        raise ValueError("confidences and correct must have one entry per photo")
    order = np.argsort(-confidence, kind="stable")
    confidence, right = confidence[order], right[order]
    answered = np.arange(1, len(confidence) + 1)
    accuracy = np.cumsum(right) / answered
    # A cut is only possible after the last of equal confidences: a threshold takes all of them.
    last_of_value = np.append(confidence[1:] < confidence[:-1], True)
    ok = last_of_value & (accuracy >= target) & (answered >= min_photos)
    if not ok.any():
        return 1.0
    cut = int(np.flatnonzero(ok)[-1])
    return float(confidence[cut]) if math.isfinite(confidence[cut]) else 1.0
