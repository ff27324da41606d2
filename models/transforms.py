"""Preprocessing built from a model's spec: the only place images become model inputs."""

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from models.checkpoint import ModelSpec

# ImageNet statistics, the conventional default; a checkpoint records whichever it was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_eval_transform(spec: ModelSpec) -> Callable[[Image.Image], torch.Tensor]:
    """RGB PIL image -> normalised float tensor (3, S, S) at the spec's input size."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((spec.input_size, spec.input_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]
    )


def denormalize(batch: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Invert the spec's normalisation: a batch back to [0, 1] RGB."""
    mean = torch.tensor(spec.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=batch.device).view(1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1)
