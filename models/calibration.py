"""Calibrated probabilities and the "unsure" answer.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", 2017) divides the logits by
one scalar ``T`` fitted on held-out photos to minimise their negative log-likelihood: the ranking of the
classes, and so the accuracy, is unchanged, while the probabilities come to mean what they say.

A prediction is *unsure* when its calibrated top-1 probability is under ``min_probability``, or when the
photo looks unlike the training data: its energy score (Liu et al., "Energy-based Out-of-distribution
Detection", 2020), ``-logsumexp(logits)`` of the raw logits, is over ``max_energy``. Higher energy means
less like anything the network has learned; ``max_energy`` is the quantile ``energy_quantile`` of the
validation photos' energies, so that share of in-distribution photos passes the test.
"""

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

#: The temperature is searched in [1/LIMIT, LIMIT]: a wider one means the logits carry no signal.
TEMPERATURE_LIMIT = 100.0
#: The probability threshold a newly fitted calibration starts with; settings may override it.
DEFAULT_MIN_PROBABILITY = 0.5
#: Share of validation photos whose energy is within ``max_energy``.
DEFAULT_ENERGY_QUANTILE = 0.95

#: The reasons a prediction is unsure, as the API and the metrics name them.
LOW_CONFIDENCE = "low confidence"
OUT_OF_DISTRIBUTION = "unlike the training photos"
UNSURE_REASONS = (LOW_CONFIDENCE, OUT_OF_DISTRIBUTION)


@dataclass(frozen=True)
class Thresholds:
    """Thresholds that override a model's own (``None``: the model's)."""

    min_probability: float | None = None
    max_energy: float | None = None


@dataclass(frozen=True)
class Calibration:
    """How a model's logits become the probabilities it reports and the "unsure" flag it sets.

    The default (temperature 1, no thresholds) is an uncalibrated model that is never unsure.
    """

    temperature: float = 1.0
    min_probability: float = 0.0
    max_energy: float | None = None
    energy_quantile: float | None = None
    #: What the fit saw (split, number of photos, NLL and ECE before and after), for the record.
    fitted_on: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not 0 <= self.min_probability <= 1:
            raise ValueError(f"min_probability must be in [0, 1], got {self.min_probability}")
        if self.max_energy is not None and not math.isfinite(self.max_energy):
            raise ValueError(f"max_energy must be a finite number, got {self.max_energy}")

    @property
    def fitted(self) -> bool:
        return self.fitted_on is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Calibration":
        if not data:
            return cls()
        max_energy, quantile = data.get("max_energy"), data.get("energy_quantile")
        return cls(
            temperature=float(data.get("temperature", 1.0)),
            min_probability=float(data.get("min_probability", 0.0)),
            max_energy=None if max_energy is None else float(max_energy),
            energy_quantile=None if quantile is None else float(quantile),
            fitted_on=dict(data["fitted_on"]) if data.get("fitted_on") else None,
        )

    def with_thresholds(self, thresholds: Thresholds) -> "Calibration":
        """A copy with the thresholds that ``thresholds`` sets."""
        changes = {key: value for key, value in asdict(thresholds).items() if value is not None}
        return replace(self, **changes)

    def probabilities(self, logits: Tensor) -> Tensor:
        """Calibrated class probabilities (B, classes) in fp32."""
        return (logits.float() / self.temperature).softmax(dim=1)

    def unsure_reasons(self, probability: float, energy: float) -> list[str]:
        """Why a prediction should go to a person: ``low confidence`` (calibrated top-1 ``probability``
        under the threshold) and/or ``unlike the training photos`` (``energy`` over its threshold)."""
        reasons = []
        if probability < self.min_probability:
            reasons.append(LOW_CONFIDENCE)
        if self.max_energy is not None and energy > self.max_energy:
            reasons.append(OUT_OF_DISTRIBUTION)
        return reasons

    def is_unsure(self, probability: float, energy: float) -> bool:
        """The rule: calibrated top-1 ``probability`` under the threshold, or ``energy`` over its own."""
        return bool(self.unsure_reasons(probability, energy))


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
