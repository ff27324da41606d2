"""Building a model's fingerprint index: the hash, embedding, label and thumbnail of each photo of a
split (its training photos, for "the training photos it resembles")."""

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.fingerprint import EmbeddingHook, hash_bits
from models.similarity import FingerprintIndex
from training.data import Loading, Photos
from training.evaluation import load_for_evaluation

logger = logging.getLogger(__name__)

#: Longest side of an index's thumbnails, in pixels, and their JPEG quality: about 2 KB a photo.
THUMBNAIL_SIZE = 64
THUMBNAIL_QUALITY = 75


def thumbnail(path: Path) -> bytes:
    with Image.open(path) as image:
        small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


@torch.inference_mode()
def build_index(
    checkpoint_path: Path, photos: Photos, loading: Loading, *, split: str = "train"
) -> FingerprintIndex:
    """Hash and embed every one of ``photos`` with the checkpoint."""
    loaded = load_for_evaluation(checkpoint_path, photos, loading)
    device = loading.device
    checkpoint, model, samples = loaded.checkpoint, loaded.model, loaded.samples
    hook = EmbeddingHook(model)
    embeddings = []
    try:
        for images, _ in loaded.loader:
            model(images.to(device))
            assert hook.features is not None
            embeddings.append(hook.features.cpu())
    finally:
        hook.remove()
    features = torch.cat(embeddings) if embeddings else torch.zeros(0, 1)
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    index = FingerprintIndex(
        model_sha256=checkpoint.sha256,
        class_names=checkpoint.spec.class_names,
        split=split,
        hashes=hash_bits(features),
        embeddings=unit.numpy().astype(np.float16),
        labels=np.array([label for _, label in samples], dtype=np.int16),
        paths=tuple(path for path, _ in samples),
        thumbnails=tuple(thumbnail(photos.root / path) for path, _ in samples),
    )
    logger.info("%s: indexed %d %s photos", checkpoint_path, len(index), split)
    return index
