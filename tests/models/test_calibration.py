import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.calibration import (
    LOW_CONFIDENCE,
    OUT_OF_DISTRIBUTION,
    Calibration,
    Thresholds,
    ValidationScores,
    energy_score,
    energy_threshold,
    fit_temperature,
)


def sampled_labels(logits: torch.Tensor, temperature: float, seed: int = 0) -> torch.Tensor:
    """Labels drawn from softmax(logits / temperature): the temperature that explains them best."""
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial((logits / temperature).softmax(dim=1), 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_made_the_labels(true_temperature: float) -> None:
    logits = torch.randn(20_000, 6, generator=torch.Generator().manual_seed(1)) * 3
    labels = sampled_labels(logits, true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_fit_temperature_minimises_the_nll() -> None:
    logits = torch.randn(2_000, 4, generator=torch.Generator().manual_seed(2)) * 4
    labels = sampled_labels(logits, 1.7)
    fitted = fit_temperature(logits, labels)

    def nll(t: float) -> float:
        return float(F.cross_entropy(logits / t, labels))

    assert nll(fitted) <= min(nll(fitted * 0.9), nll(fitted * 1.1), nll(1.0))


def test_temperature_scaling_keeps_the_ranking() -> None:
    logits = torch.randn(50, 6, generator=torch.Generator().manual_seed(3))
    calibrated = Calibration(temperature=0.3).probabilities(logits)
    assert torch.equal(calibrated.argmax(dim=1), logits.argmax(dim=1))
    assert calibrated.sum(dim=1) == pytest.approx(torch.ones(50), abs=1e-5)
    # A temperature under 1 sharpens: the top probability rises.
    assert bool((calibrated.max(dim=1).values >= logits.softmax(dim=1).max(dim=1).values - 1e-6).all())


def test_energy_score_is_minus_logsumexp_and_its_threshold_a_quantile() -> None:
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0], [-5.0, -5.0]])
    assert energy_score(logits).tolist() == pytest.approx(
        [-math.log(2), -(10 + math.log(1 + math.exp(-10))), 5 - math.log(2)], abs=1e-5
    )
    many = torch.randn(1_000, 6, generator=torch.Generator().manual_seed(4))
    threshold = energy_threshold(many, 0.9)
    assert float((energy_score(many) <= threshold).float().mean()) == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize(
    ("probability", "energy", "unsure"),
    [(0.9, -5.0, False), (0.4, -5.0, True), (0.9, -1.0, True), (0.5, -2.0, False)],
)
def test_unsure_when_under_the_probability_or_over_the_energy(
    probability: float, energy: float, unsure: bool
) -> None:
    calibration = Calibration(temperature=1.0, min_probability=0.5, max_energy=-2.0)
    assert calibration.is_unsure(probability, energy) is unsure


def test_an_uncalibrated_model_is_never_unsure_and_thresholds_override() -> None:
    plain = Calibration.from_dict({})
    assert not plain.fitted
    assert plain.temperature == 1.0
    assert not plain.is_unsure(0.01, 100.0)
    strict = plain.with_thresholds(Thresholds(min_probability=0.8))
    assert strict.is_unsure(0.79, -10.0)
    assert not strict.is_unsure(0.81, -10.0)
    assert strict.max_energy is None


def test_calibration_round_trips_and_refuses_nonsense() -> None:
    calibration = Calibration(
        temperature=0.6, min_probability=0.5, max_energy=-2.1, energy_quantile=0.95, fitted_on={"n": 1}
    )
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    for bad in ({"temperature": 0.0}, {"temperature": float("nan")}, {"min_probability": 1.5}):
        with pytest.raises(ValueError, match="must be"):
            Calibration.from_dict(bad)


def test_a_photo_far_from_the_training_photos_is_unsure_for_that_reason() -> None:
    calibration = Calibration(min_probability=0.5, max_energy=-2.0, max_distance=0.3)
    assert calibration.unsure_reasons(0.9, -5.0, 0.1) == []
    assert calibration.unsure_reasons(0.9, -5.0, 0.4) == [OUT_OF_DISTRIBUTION]
    assert calibration.unsure_reasons(0.4, -5.0, 0.4) == [LOW_CONFIDENCE, OUT_OF_DISTRIBUTION]
    # Without a distance (no feature bank) only the energy decides.
    assert calibration.unsure_reasons(0.9, -5.0, None) == []
    assert calibration.unsure_reasons(0.9, -1.0, None) == [OUT_OF_DISTRIBUTION]


def test_a_target_chooses_the_threshold_on_the_validation_photos_that_look_familiar() -> None:
    # 100 familiar photos, the 80 most confident right; 50 unfamiliar ones, confident and wrong.
    validation = ValidationScores(
        confidences=np.concatenate([np.linspace(0.99, 0.4, 100), np.full(50, 0.995)]).astype(np.float32),
        correct=np.array([True] * 80 + [False] * 20 + [False] * 50),
        energies=np.full(150, -5.0, np.float32),
        distances=np.concatenate([np.full(100, 0.1), np.full(50, 0.9)]).astype(np.float32),
    )
    calibration = Calibration(max_energy=0.0, max_distance=0.5).for_target(0.95, validation)
    assert calibration.target_accuracy == 0.95
    familiar = validation.confidences[:100]
    # 84 answered are 80/84 = 95.2% right; 85 would be 94.1%.
    assert calibration.min_probability == pytest.approx(float(familiar[83]))
    # Settings that give a target choose again; settings that give the threshold itself win.
    retargeted = Calibration(max_energy=0.0, max_distance=0.5).with_thresholds(
        Thresholds(target_accuracy=0.8), validation
    )
    assert retargeted.min_probability < calibration.min_probability
    fixed = Calibration(max_energy=0.0, max_distance=0.5).with_thresholds(
        Thresholds(min_probability=0.7, target_accuracy=0.8), validation
    )
    assert (fixed.min_probability, fixed.target_accuracy) == (0.7, None)
    # A model whose threshold was chosen for a target says so no more once the threshold is set by hand.
    overridden = calibration.with_thresholds(Thresholds(min_probability=0.6))
    assert (overridden.min_probability, overridden.target_accuracy) == (0.6, None)
