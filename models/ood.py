"""How unlike a model's training photos a photo is, in the model's own feature space, and the confidence
threshold that makes its sure answers right as often as asked.

The *feature distance* of a photo is one minus the cosine similarity of its pooled features (the
classifier's input) to those of its ``k``-th nearest training photo (Sun et al., "Out-of-distribution
Detection with Deep Nearest Neighbors", 2022). Unlike the energy score, which reads the logits and so only
what the classifier has learned to separate, it sees a photo whose features sit where no training photo's
do: a new camera, a new background. The training photos' features are stored with the model as
``ood.npz`` (unit-length fp16 vectors, no photos), its weights' digest checked at load.

A fine-tune's bank also holds a sample of its base's training photos, after its own. Those tell which
model should answer a photo (:meth:`FeatureBank.routes_to_base`): one nearer the base's photos than the
site's, by more than a margin chosen on the base's validation photos, is one the base knows better.
"""

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.nn import functional as F

from models.calibration import ValidationScores
from models.files import atomic_open

OOD_FILE = "ood.npz"
FORMAT = "trashcam.feature-bank"
#: The neighbour whose distance is the score. The nearest told the held-out sites from the test photos
#: best (docs/RESULTS.md, "Sure answers on photos unlike the training photos").
DEFAULT_K = 1
#: Training photos a bank keeps at most, drawn at random: 16 MB in fp16 at 2048 features.
DEFAULT_BANK_PHOTOS = 4096
#: The share of the base's validation photos that a fine-tune routed beside its base answers itself: the
#: quantile of their routing margins that sets the margin (docs/RESULTS.md, "Serving a site's model
#: beside its base").
ROUTE_BASE_SHARE = 0.05


class NoFeatureBankError(LookupError):
    """No feature bank, or one that belongs to other weights."""


def unit_rows(embeddings: npt.ArrayLike | Tensor) -> Tensor:
    """The rows of ``embeddings`` scaled to unit length, fp32."""
    rows = embeddings if isinstance(embeddings, Tensor) else torch.from_numpy(np.asarray(embeddings))
    return F.normalize(rows.float(), dim=1)


@dataclass(frozen=True)
class FeatureBank:
    """The training photos' pooled features, as one model sees them, and the ``k`` of the score."""

    model_sha256: str
    embeddings: npt.NDArray[np.float16]
    k: int = DEFAULT_K
    #: Photos per training source, for the record.
    sources: Mapping[str, int] = field(default_factory=dict)
    #: The validation photos' scores the thresholds were chosen on (None: not stored).
    validation: ValidationScores | None = None
    #: How many rows, from the first, are the model's own training photos; the rest are its base's
    #: (None: all are its own).
    own_photos: int | None = None
    #: The routing margin (:meth:`routes_to_base`); None: the model answers every photo itself.
    route_margin: float | None = None

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.embeddings) == 0:
            raise ValueError("a feature bank needs at least one photo's features")
        if not 1 <= self.k <= len(self.embeddings):
            raise ValueError(f"k must be in [1, {len(self.embeddings)}], got {self.k}")
        if self.own_photos is not None and not 0 < self.own_photos <= len(self.embeddings):
            raise ValueError(f"own_photos must be in [1, {len(self.embeddings)}], got {self.own_photos}")
        if self.route_margin is not None and not self.routes:
            raise ValueError("a routing margin needs rows of the model's own photos and of its base's")

    @classmethod
    def from_embeddings(
        cls,
        embeddings: npt.ArrayLike,
        *,
        model_sha256: str,
        k: int = DEFAULT_K,
        sources: Mapping[str, int] | None = None,
        validation: ValidationScores | None = None,
        own_photos: int | None = None,
    ) -> "FeatureBank":
        """A bank of ``embeddings`` (N, D), normalised and stored in fp16; the first ``own_photos`` rows
        are the model's own training photos, the rest its base's."""
        unit = unit_rows(embeddings).numpy().astype(np.float16)
        return cls(model_sha256, unit, k, dict(sources or {}), validation, own_photos)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @functools.cached_property
    def _matrix(self) -> Tensor:
        # Stored in fp16 to stay small; searched in fp32, converted once rather than per query.
        return torch.from_numpy(self.embeddings.astype(np.float32))

    def scores(self, embeddings: npt.ArrayLike | Tensor) -> npt.NDArray[np.float32]:
        """The feature distance (B,) of each row of ``embeddings`` (B, D): in [0, 2], higher is
        less like the training photos."""
        queries = unit_rows(embeddings)
        if queries.shape[1] != self.dim:
            raise ValueError(f"embeddings have {queries.shape[1]} features, the bank {self.dim}")
        similarity = queries @ self._matrix.T
        kth = similarity.topk(self.k, dim=1).values[:, -1]
        return (1.0 - kth).clamp(min=0.0).numpy()

    @property
    def routes(self) -> bool:
        """Whether the bank holds rows of both the model's own photos and its base's."""
        return self.own_photos is not None and self.own_photos < len(self.embeddings)

    def routing_margins(self, embeddings: npt.ArrayLike | Tensor) -> npt.NDArray[np.float32]:
        """The cosine distance (B,) of each row of ``embeddings`` to the nearest of the model's own
        photos minus that to the nearest of its base's: positive, nearer the base's."""
        if not self.routes:
            raise ValueError("the bank holds no photos of a base")
        assert self.own_photos is not None
        queries = unit_rows(embeddings)
        similarity = queries @ self._matrix.T
        own = similarity[:, : self.own_photos].max(dim=1).values
        base = similarity[:, self.own_photos :].max(dim=1).values
        return (base - own).numpy()

    def routes_to_base(self, embeddings: npt.ArrayLike | Tensor) -> npt.NDArray[np.bool_] | None:
        """Which photos (rows of ``embeddings``) the base should answer: those nearer its photos than
        the model's own by more than the margin; None when the bank routes nothing."""
        if self.route_margin is None:
            return None
        return self.routing_margins(embeddings) > self.route_margin

    def save(self, path: Path) -> None:
        """Write the bank atomically (numpy's zip, no pickle)."""
        meta = {
            "format": FORMAT,
            "model_sha256": self.model_sha256,
            "k": self.k,
            "sources": dict(self.sources),
            "own_photos": self.own_photos,
            "route_margin": self.route_margin,
        }
        # No validation scores are stored as empty arrays.
        validation = self.validation or ValidationScores(
            np.zeros(0, np.float32), np.zeros(0, bool), np.zeros(0, np.float32), np.zeros(0, np.float32)
        )
        with atomic_open(path) as handle:
            np.savez(
                handle,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                embeddings=self.embeddings,
                val_confidences=validation.confidences.astype(np.float32),
                val_correct=validation.correct.astype(bool),
                val_energies=validation.energies.astype(np.float32),
                val_distances=validation.distances.astype(np.float32),
            )

    @classmethod
    def load(cls, path: Path, *, model_sha256: str | None = None) -> "FeatureBank":
        """Read a bank; with ``model_sha256``, refuse one computed with other weights."""
        if not os.path.exists(path):
            raise NoFeatureBankError(f"no feature bank at {path}")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            embeddings = data["embeddings"].astype(np.float16)
            validation = None
            if "val_confidences" in data.files and len(data["val_confidences"]):
                validation = ValidationScores(
                    data["val_confidences"], data["val_correct"], data["val_energies"], data["val_distances"]
                )
        if meta.get("format") != FORMAT:
            raise NoFeatureBankError(f"{path} is not a feature bank")
        if model_sha256 is not None and meta["model_sha256"] != model_sha256:
            raise NoFeatureBankError(f"{path} was computed with other weights than this model's")
        return cls(
            meta["model_sha256"],
            embeddings,
            int(meta["k"]),
            dict(meta.get("sources", {})),
            validation,
            meta.get("own_photos"),
            meta.get("route_margin"),
        )
