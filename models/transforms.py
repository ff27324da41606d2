"""Preprocessing built from a model's spec: the only place images become model inputs."""

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from models.checkpoint import ModelSpec

# ImageNet statistics, the conventional default; a checkpoint records whichever it was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def square_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, S, S): squashed to the square with PIL's antialiased bilinear,
    the pixels evaluation and serving see."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(size, size, 3).permute(2, 0, 1)


class PixelScaling:
    """uint8 pixels (any leading dimensions, channels third from last) -> normalised floats, on
    ``device``: ``(x / 255 - mean) / std`` as one multiply-add."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device | None = None
    ) -> None:
        std_tensor = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
        mean_tensor = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * std_tensor)
        self._shift = -mean_tensor / std_tensor

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, pixels.float(), self._scale)


class EvalTransform:
    """RGB PIL image -> normalised float tensor (3, S, S) at the spec's input size.

    The resize is PIL's antialiased bilinear, which torchvision's ``Resize(antialias=True)`` follows
    (the two agree to within one level of 255), and the scaling to [0, 1] and the normalisation are
    one multiply-add. It costs a third of the CPU of the equivalent ``transforms.v2`` pipeline, which
    matters where every request prepares its photo while the model runs on the same cores.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.size = spec.input_size
        self.scaling = PixelScaling(spec.mean, spec.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.scaling(square_pixels(image, self.size))


def build_eval_transform(spec: ModelSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The preprocessing of evaluation and serving (see :class:`EvalTransform`)."""
    return EvalTransform(spec)


def denormalize(batch: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Invert the spec's normalisation: a batch back to [0, 1] RGB."""
    mean = torch.tensor(spec.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=batch.device).view(1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1)
