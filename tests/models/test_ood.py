from pathlib import Path

import numpy as np
import pytest

from models.calibration import choose_min_probability
from models.ood import ROUTE_BASE_SHARE, FeatureBank, NoFeatureBankError
from training.ood import choose_route_margin


def clusters(rng: np.random.Generator, centres: np.ndarray, per_centre: int, spread: float) -> np.ndarray:
    return np.concatenate(
        [centre + spread * rng.standard_normal((per_centre, centres.shape[1])) for centre in centres]
    )


def test_a_shifted_set_scores_further_than_the_training_distribution() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 64))
    bank = FeatureBank.from_embeddings(clusters(rng, centres, 200, 0.3), model_sha256="a", k=5)
    alike = clusters(rng, centres, 50, 0.3)
    shifted = clusters(rng, rng.standard_normal((3, 64)), 50, 0.3)
    alike_scores, shifted_scores = bank.scores(alike), bank.scores(shifted)
    assert alike_scores.shape == (150,)
    # Every shifted photo is further than every photo like the training ones.
    assert shifted_scores.min() > alike_scores.max()
    assert alike_scores.min() >= 0.0
    assert shifted_scores.max() <= 2.0


def test_the_score_is_the_distance_to_the_kth_neighbour() -> None:
    bank = FeatureBank.from_embeddings(np.eye(4, dtype=np.float32), model_sha256="a", k=2)
    # Nearest is axis 0 (cosine 1/sqrt(2) after normalising), second nearest axis 1 (the same); third is 0.
    query = np.array([[1.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    assert bank.scores(query)[0] == pytest.approx(1 - 1 / np.sqrt(2), abs=1e-3)
    far = np.array([[0.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    assert bank.scores(far)[0] == pytest.approx(1.0, abs=1e-3)


def test_banks_refuse_bad_shapes() -> None:
    with pytest.raises(ValueError, match="k must be"):
        FeatureBank.from_embeddings(np.ones((3, 4)), model_sha256="a", k=4)
    bank = FeatureBank.from_embeddings(np.ones((3, 4)), model_sha256="a", k=1)
    with pytest.raises(ValueError, match=r"5 features, the bank 4"):
        bank.scores(np.ones((1, 5)))


def test_a_bank_round_trips_and_refuses_other_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bank = FeatureBank.from_embeddings(
        rng.standard_normal((20, 8)), model_sha256="abc", k=3, sources={"x": 20}
    )
    path = tmp_path / "ood.npz"
    bank.save(path)
    loaded = FeatureBank.load(path, model_sha256="abc")
    assert (loaded.k, dict(loaded.sources), loaded.model_sha256) == (3, {"x": 20}, "abc")
    np.testing.assert_array_equal(loaded.embeddings, bank.embeddings)
    with pytest.raises(NoFeatureBankError, match="other weights"):
        FeatureBank.load(path, model_sha256="def")
    with pytest.raises(NoFeatureBankError, match="no feature bank"):
        FeatureBank.load(tmp_path / "missing.npz")


def test_the_threshold_answers_the_most_photos_that_meet_the_target() -> None:
    # 100 photos by falling confidence: the top 60 are 59/60 right, the next 40 all wrong.
    confidences = np.linspace(0.99, 0.2, 100)
    correct = np.array([True] * 60 + [False] * 40)
    correct[10] = False
    threshold = choose_min_probability(confidences, correct, 0.95, min_photos=10)
    sure = confidences >= threshold
    # 63 answered are 59/63 = 93.7% right, under 95%; 62 answered are 59/62 = 95.2%.
    assert sure.sum() == 62
    assert correct[sure].mean() >= 0.95


def test_the_threshold_never_cuts_between_equal_confidences() -> None:
    confidences = np.array([0.9] * 40 + [0.8] * 40)
    correct = np.array([True] * 40 + [True] * 30 + [False] * 10)
    # All of 0.8 or none of it: 70/80 = 87.5% misses 95%, so only the 0.9 photos are sure.
    assert choose_min_probability(confidences, correct, 0.95) == pytest.approx(0.9)


def test_no_cut_meets_the_target_and_nothing_is_sure() -> None:
    assert choose_min_probability(np.linspace(0.9, 0.1, 50), np.zeros(50, bool), 0.9) == 1.0
    # Too few photos above any cut that meets it count for nothing.
    assert choose_min_probability([0.9] * 5 + [0.1] * 50, [True] * 5 + [False] * 50, 0.9) == 1.0


def routing_bank(margin: float | None = 0.0) -> FeatureBank:
    """A bank whose own photos lie along axis 0 and whose base's photos along axis 1."""
    rows = np.array([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 1.0, 0.0]], dtype=np.float32)
    bank = FeatureBank.from_embeddings(rows, model_sha256="a", own_photos=2)
    return FeatureBank(bank.model_sha256, bank.embeddings, own_photos=2, route_margin=margin)


def test_photos_nearer_the_bases_photos_are_routed_to_the_base() -> None:
    bank = routing_bank()
    queries = np.array([[1.0, 0.05, 0.0], [0.05, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    margins = bank.routing_margins(queries)
    assert margins[0] < 0 < margins[1]
    # Equally far from both (orthogonal to both): not nearer the base's by more than the margin.
    assert margins[2] == pytest.approx(0.0, abs=1e-3)
    to_base = bank.routes_to_base(queries)
    assert to_base is not None
    assert to_base.tolist() == [False, True, False]
    # A larger margin leaves more to the model itself.
    assert not np.any(routing_bank(margin=2.0).routes_to_base(queries))


def test_a_bank_routes_only_with_photos_of_both_and_a_margin(tmp_path: Path) -> None:
    assert routing_bank(margin=None).routes_to_base(np.eye(3, dtype=np.float32)) is None
    own_only = FeatureBank.from_embeddings(np.eye(3, dtype=np.float32), model_sha256="a", own_photos=3)
    assert not own_only.routes
    with pytest.raises(ValueError, match="no photos of a base"):
        own_only.routing_margins(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="routing margin needs"):
        FeatureBank(own_only.model_sha256, own_only.embeddings, own_photos=3, route_margin=0.0)
    with pytest.raises(ValueError, match="own_photos must be"):
        FeatureBank(own_only.model_sha256, own_only.embeddings, own_photos=0)
    bank = routing_bank(margin=0.125)
    bank.save(tmp_path / "ood.npz")
    loaded = FeatureBank.load(tmp_path / "ood.npz")
    assert (loaded.own_photos, loaded.route_margin) == (2, 0.125)


def test_the_routing_margin_leaves_the_chosen_share_of_the_bases_photos_to_the_model() -> None:
    rng = np.random.default_rng(0)
    own, base = rng.standard_normal((50, 16)), rng.standard_normal((50, 16))
    bank = FeatureBank.from_embeddings(np.concatenate([own, base]), model_sha256="a", own_photos=50)
    base_val = base + 0.5 * rng.standard_normal((50, 16))
    margin = choose_route_margin(bank, base_val)
    routed = FeatureBank(bank.model_sha256, bank.embeddings, own_photos=50, route_margin=margin)
    to_base = routed.routes_to_base(base_val)
    assert to_base is not None
    assert 1 - to_base.mean() == pytest.approx(ROUTE_BASE_SHARE, abs=0.021)
