"""An index of a model's training photos by hash and embedding, for "these are the training photos it
resembles".

Stored next to the model's checkpoint as ``index.npz`` (numpy's zip of arrays, loaded without
pickle): 64-bit hashes (8 bytes a photo), unit-length embeddings in fp16 (2 bytes a feature), labels,
paths, and a small JPEG thumbnail of each photo; the digest of the weights it was computed with is
checked at load, so an index never answers for another model.
"""

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.files import atomic_open
from models.fingerprint import hamming

INDEX_FILE = "index.npz"
FORMAT = "trashcam.fingerprint-index"


class NoIndexError(LookupError):
    """No index, or one that belongs to other weights."""


@dataclass(frozen=True)
class Neighbour:
    position: int
    distance: float


@dataclass(frozen=True)
class FingerprintIndex:
    """Photos of a data set split, as one model sees them."""

    model_sha256: str
    class_names: tuple[str, ...]
    split: str
    hashes: npt.NDArray[np.uint64]
    embeddings: npt.NDArray[np.float16]
    labels: npt.NDArray[np.int16]
    paths: tuple[str, ...]
    thumbnails: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.hashes)

    @functools.cached_property
    def _unit_embeddings(self) -> npt.NDArray[np.float32]:
        # Stored in fp16 to stay small; searched in fp32, converted once rather than per query.
        return self.embeddings.astype(np.float32)

    def by_hash(self, query: int, k: int) -> list[Neighbour]:
        """The ``k`` photos whose hashes are fewest bits from ``query`` (ties: index order)."""
        distances = hamming(self.hashes, query)
        order = np.argsort(distances, kind="stable")[:k]
        return [Neighbour(int(i), float(distances[i])) for i in order]

    def by_embedding(self, query: npt.NDArray[np.floating], k: int) -> list[Neighbour]:
        """The ``k`` photos of highest cosine similarity to ``query``; distance = 1 - cosine."""
        unit = np.asarray(query, dtype=np.float32)
        unit = unit / max(float(np.linalg.norm(unit)), 1e-12)
        # fp16 rounding can put a photo a hair past itself; a distance is never negative.
        distances = np.clip(1.0 - self._unit_embeddings @ unit, 0.0, 2.0)
        order = np.argsort(distances, kind="stable")[:k]
        return [Neighbour(int(i), float(distances[i])) for i in order]

    def save(self, path: str | os.PathLike[str]) -> None:
        blob = np.frombuffer(b"".join(self.thumbnails), dtype=np.uint8)
        offsets = np.cumsum([0, *(len(t) for t in self.thumbnails)]).astype(np.int64)
        meta = {
            "format": FORMAT,
            "model_sha256": self.model_sha256,
            "class_names": list(self.class_names),
            "split": self.split,
            "paths": list(self.paths),
        }
        with atomic_open(path) as handle:
            np.savez(
                handle,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                hashes=self.hashes,
                embeddings=self.embeddings,
                labels=self.labels,
                thumbnails=blob,
                offsets=offsets,
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model_sha256: str | None = None) -> "FingerprintIndex":
        """Read an index; with ``model_sha256``, refuse one computed with other weights."""
        path = Path(path)
        if not path.is_file():
            raise NoIndexError(f"{path.name}: no index of training photos for this model")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            blob, offsets = data["thumbnails"].tobytes(), data["offsets"]
            index = cls(
                model_sha256=str(meta["model_sha256"]),
                class_names=tuple(meta["class_names"]),
                split=str(meta["split"]),
                hashes=data["hashes"].astype(np.uint64),
                embeddings=data["embeddings"].astype(np.float16),
                labels=data["labels"].astype(np.int16),
                paths=tuple(meta["paths"]),
                thumbnails=tuple(blob[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)),
            )
        if meta.get("format") != FORMAT:
            raise NoIndexError(f"{path.name}: not a {FORMAT} file")
        if model_sha256 is not None and index.model_sha256 != model_sha256:
            raise NoIndexError(
                f"{path.name} was computed with weights {index.model_sha256[:12]}, not {model_sha256[:12]}"
            )
        return index
