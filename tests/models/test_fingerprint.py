import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from models.fingerprint import embed, grid_shape, hamming, hash_bits, hash_hex, low_frequencies
from models.similarity import FingerprintIndex, Neighbour, NoIndexError


def reference_dct(grid: np.ndarray) -> np.ndarray:
    """The orthonormal 2-D DCT-II from its definition."""

    def matrix(n: int) -> np.ndarray:
        k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        m = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
        m[0] /= math.sqrt(2)
        return m

    return matrix(grid.shape[0]) @ grid @ matrix(grid.shape[1]).T


def test_the_feature_vector_is_laid_out_row_major_on_a_near_square_grid() -> None:
    assert grid_shape(2048) == (32, 64)
    assert grid_shape(128) == (8, 16)
    with pytest.raises(ValueError, match="too few rows"):
        grid_shape(2 * 7)
    features = torch.randn(2, 2048, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = low_frequencies(features).numpy()
    for row, vector in zip(ours, features.numpy(), strict=True):
        np.testing.assert_allclose(row, reference_dct(vector.reshape(32, 64))[:8, :8], atol=1e-10)


def test_a_hash_is_64_bits_half_of_them_set_and_the_first_coefficient_the_top_bit() -> None:
    features = torch.randn(20, 2048, generator=torch.Generator().manual_seed(1))
    hashes = hash_bits(features)
    assert hashes.dtype == np.uint64
    assert all(bin(int(h)).count("1") == 32 for h in hashes)  # above the median of 64 distinct values
    coefficients = low_frequencies(features[:1]).reshape(64)
    top = bool(coefficients[0] > coefficients.median())
    assert (int(hashes[0]) >> 63 == 1) is top
    assert len(hash_hex(hashes[0])) == 16
    assert np.array_equal(hash_bits(features), hashes)  # deterministic


def test_near_identical_features_give_near_identical_hashes() -> None:
    generator = torch.Generator().manual_seed(2)
    features = torch.rand(50, 2048, generator=generator)
    nudged = features + 0.001 * torch.randn(features.shape, generator=generator)
    others = torch.rand(50, 2048, generator=generator)
    close = [int(hamming(hash_bits(nudged[i : i + 1]), h)[0]) for i, h in enumerate(hash_bits(features))]
    far = [int(hamming(hash_bits(others[i : i + 1]), h)[0]) for i, h in enumerate(hash_bits(features))]
    assert max(close) <= 8 < min(far)


def test_embeddings_are_the_classifiers_input() -> None:
    model = create_model("simple_cnn", num_classes=3, width=4).eval()
    batch = torch.randn(2, 3, 32, 32)
    logits, embeddings = embed(model, batch)
    assert embeddings.shape == (2, 128)
    with torch.inference_mode():
        torch.testing.assert_close(model.get_submodule("fc3")(embeddings), logits)


def index_of(n: int, sha: str = "a" * 64) -> FingerprintIndex:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return FingerprintIndex(
        model_sha256=sha,
        class_names=("glass", "metal"),
        split="train",
        hashes=hash_bits(torch.from_numpy(vectors)),
        embeddings=vectors.astype(np.float16),
        labels=np.arange(n, dtype=np.int16) % 2,
        paths=tuple(f"p{i}.jpg" for i in range(n)),
        thumbnails=tuple(bytes([i]) * (i + 1) for i in range(n)),
    )


def test_an_index_round_trips_and_finds_each_photo_first(tmp_path: Path) -> None:
    index = index_of(30)
    index.save(tmp_path / "index.npz")
    loaded = FingerprintIndex.load(tmp_path / "index.npz", model_sha256="a" * 64)
    assert np.array_equal(loaded.hashes, index.hashes)
    assert loaded.thumbnails == index.thumbnails
    assert loaded.paths == index.paths
    for i in (0, 7, 29):
        assert loaded.by_hash(int(index.hashes[i]), 3)[0] == Neighbour(i, 0.0)
        nearest = loaded.by_embedding(index.embeddings[i].astype(np.float32), 3)
        assert nearest[0].position == i
        assert nearest[0].distance == pytest.approx(0.0, abs=1e-3)
        assert [n.distance for n in nearest] == sorted(n.distance for n in nearest)


def test_an_index_of_other_weights_or_none_is_refused(tmp_path: Path) -> None:
    index_of(5).save(tmp_path / "index.npz")
    with pytest.raises(NoIndexError, match="computed with weights aaaaaaaaaaaa, not bbbbbbbbbbbb"):
        FingerprintIndex.load(tmp_path / "index.npz", model_sha256="b" * 64)
    with pytest.raises(NoIndexError, match="no index"):
        FingerprintIndex.load(tmp_path / "missing.npz")
