"""Seeds and random-number-generator state, stored as tensors so the resume file loads with
``torch.load(weights_only=True)``.

Training reseeds every generator at the start of each epoch from ``(seed, epoch)`` and derives each
sample's augmentation seed from ``(seed, epoch, index)``, so an epoch's randomness depends on nothing
that happened before it: resuming at an epoch boundary reproduces the uninterrupted run bit for bit,
whatever the number of data-loader workers.
"""

import hashlib
import random
from typing import Any

import numpy as np
import torch

_SEED_MASK = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts``, stable across processes and Python versions (unlike ``hash``)."""
    text = "/".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & _SEED_MASK


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's includes every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values."""
    version, mt_state, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": {
            "version": int(version),
            "state": torch.tensor(mt_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored only when CUDA is available."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state(
        (
            nps["name"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
