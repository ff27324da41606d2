"""A checkpoint's logits and pooled features (the classifier's input) for every photo of a sample list,
in one forward pass per batch: what the out-of-distribution bank and its thresholds are built from."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from models.fingerprint import EmbeddingHook
from models.precision import autocast
from training.data import Loading, Photos
from training.evaluation import load_for_evaluation


@dataclass(frozen=True)
class Features:
    """Per photo: raw logits (N, classes), pooled features (N, D) and labels (N,), in sample order."""

    logits: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]


@torch.inference_mode()
def extract_features(
    checkpoint_path: Path, photos: Photos, loading: Loading, *, amp_dtype: torch.dtype | None = None
) -> Features:
    """Logits and pooled features of every one of ``photos``, their labels in the checkpoint's order."""
    loaded = load_for_evaluation(checkpoint_path, photos, loading)
    device = loading.device
    model = loaded.model.eval()
    hook = EmbeddingHook(model)
    logits, embeddings, labels = [], [], []
    try:
        for images, targets in loaded.loader:
            with autocast(device, amp_dtype):
                output = model(images.to(device, non_blocking=True))
            assert hook.features is not None
            logits.append(output.float().cpu())
            embeddings.append(hook.features.float().cpu())
            labels.append(targets)
    finally:
        hook.remove()
    if not logits:
        return Features(
            np.zeros((0, len(loaded.checkpoint.spec.class_names)), np.float32),
            np.zeros((0, 0), np.float32),
            np.zeros(0, np.int64),
        )
    return Features(
        torch.cat(logits).numpy(), torch.cat(embeddings).numpy(), torch.cat(labels).long().numpy()
    )
