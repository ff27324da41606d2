"""The paper's deep-feature perceptual hash (Bai and Joe, section 4.2) and the embeddings it comes from.

A photo's *embedding* is the input of the network's classifier: the pooled features of its last stage
(2048 values for the ResNet-50s, global-average-pooled ``layer4``; 128 for the simple CNN, the output
of ``fc2``), in the network's channel order.

Its 64-bit *hash*:

1. lay the D features out row-major, in channel order, on an H x W grid, H the largest divisor of D
   that is at most sqrt(D) (2048 -> 32 x 64: feature ``i`` sits at row ``i // 64``, column ``i % 64``);
2. take the 2-D DCT-II of the grid (orthonormal, as ``scipy.fft.dctn(..., norm="ortho")``), keeping the
   8 x 8 lowest frequencies (the top-left block);
3. set a bit for each of those 64 coefficients that is above their median;
4. read the bits row-major over the 8 x 8 block, the (0, 0) coefficient as the most significant bit:
   a 64-bit integer, written as 16 hex digits.

Photos that the network sees alike get hashes a few bits apart (Hamming distance); the embeddings
themselves are compared by cosine similarity.
"""

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

#: Side of the block of low-frequency DCT coefficients: 8 x 8 = 64 bits.
HASH_SIDE = 8
HASH_BITS = HASH_SIDE * HASH_SIDE


def grid_shape(dim: int) -> tuple[int, int]:
    """(H, W) of the grid a D-vector is laid out on: H the largest divisor of D with H <= sqrt(D)."""
    height = max(h for h in range(1, math.isqrt(dim) + 1) if dim % h == 0)
    width = dim // height
    if height < HASH_SIDE:
        raise ValueError(
            f"{dim} features lay out as {height} x {width}: "
            f"too few rows for an {HASH_SIDE} x {HASH_SIDE} hash"
        )
    return height, width


@lru_cache(maxsize=8)
def dct_matrix(size: int, keep: int = HASH_SIDE) -> Tensor:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of order ``size`` (keep x size)."""
    n = torch.arange(size, dtype=torch.float64)
    k = torch.arange(keep, dtype=torch.float64)[:, None]
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix


def low_frequencies(embeddings: Tensor) -> Tensor:
    """The 8 x 8 lowest 2-D DCT-II coefficients (B, 8, 8) of each embedding's grid."""
    batch, dim = embeddings.shape
    height, width = grid_shape(dim)
    grids = embeddings.detach().double().reshape(batch, height, width)
    rows, columns = dct_matrix(height), dct_matrix(width)
    return rows @ grids @ columns.T


def hash_bits(embeddings: Tensor) -> npt.NDArray[np.uint64]:
    """The 64-bit hash of each embedding (B,), as unsigned integers."""
    coefficients = low_frequencies(embeddings).reshape(len(embeddings), HASH_BITS)
    bits = (coefficients > coefficients.median(dim=1, keepdim=True).values).numpy()
    weights = np.left_shift(np.uint64(1), np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64))
    return np.bitwise_or.reduce(np.where(bits, weights, np.uint64(0)), axis=1).astype(np.uint64)


def hash_hex(value: int | np.uint64) -> str:
    return f"{int(value):016x}"


def hamming(hashes: npt.NDArray[np.uint64], query: int | np.uint64) -> npt.NDArray[np.int64]:
    """Bits in which each of ``hashes`` differs from ``query``."""
    return np.bitwise_count(np.bitwise_xor(hashes, np.uint64(query))).astype(np.int64)


def classifier_of(model: nn.Module) -> nn.Module:
    """The network's classifier (``classifier_layer``: the layer with one output per class)."""
    name = getattr(model, "classifier_layer", None)
    if not isinstance(name, str):
        raise ValueError(f"{type(model).__name__} does not name its classifier (classifier_layer)")
    return model.get_submodule(name)


class EmbeddingHook:
    """Captures the input of a network's classifier on every forward pass (``first_only``: on the first
    only): its pooled features."""

    def __init__(self, model: nn.Module, *, first_only: bool = False) -> None:
        self.features: Tensor | None = None
        self.first_only = first_only
        self._handle = classifier_of(model).register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self.first_only and self.features is not None:
            return
        self.features = inputs[0].detach().float().flatten(1)

    def remove(self) -> None:
        self._handle.remove()


@torch.inference_mode()
def embed(model: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, embeddings) of a preprocessed batch, from one forward pass."""
    hook = EmbeddingHook(model)
    try:
        logits = model(batch)
    finally:
        hook.remove()
    assert hook.features is not None
    return logits, hook.features
