"""How faithful an explanation is to the model: does the model still decide the same way on what the
heatmap highlights?

- Average drop and increase in confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018): the image is
  multiplied by its heatmap, and the target class's probability on that "explanation map" is compared
  with the probability on the whole image. Lower average drop and higher increase are better.
- Deletion and insertion (Petsiuk et al., "RISE", BMVC 2018): pixels are removed from the image (or
  added to a blurred copy) in order of decreasing heat, and the area under the target probability's
  curve is measured. Lower deletion AUC and higher insertion AUC are better.

Images are normalised batches, so "removed" means set to 0, the data set's mean colour.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class Faithfulness:
    """Per-image scores for a batch."""

    drop: Tensor  # max(0, p - p_masked) / p, in [0, 1]
    increase: Tensor  # 1.0 where p_masked > p
    deletion_auc: Tensor
    insertion_auc: Tensor


@torch.no_grad()
def target_probability(model: nn.Module, images: Tensor, targets: Tensor, *, chunk: int = 64) -> Tensor:
    """Softmax probability of each image's target class, computed in chunks."""
    out = []
    for start in range(0, len(images), chunk):
        logits = model(images[start : start + chunk])
        out.append(logits.float().softmax(dim=1).gather(1, targets[start : start + chunk, None])[:, 0])
    return torch.cat(out)


def confidence_change(
    model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """(drop, increase) per image, from the image and the image multiplied by its heatmap."""
    full = target_probability(model, images, targets)
    masked = target_probability(model, images * heatmaps[:, None], targets)
    drop = (full - masked).clamp_min(0) / full.clamp_min(1e-12)
    return drop, (masked > full).float()


def area_under(curve: Tensor) -> Tensor:
    """Trapezoidal area of curves (B, steps + 1) sampled evenly on [0, 1]."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    heatmaps: Tensor,
    targets: Tensor,
    *,
    steps: int = 32,
    blur_sigma: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """(deletion, insertion) target-probability curves (B, steps + 1)."""
    batch, _, height, width = images.shape
    order = heatmaps.flatten(1).argsort(dim=1, descending=True)  # hottest pixels first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width, device=images.device).expand(batch, -1))
    rank = rank.view(batch, 1, height, width)
    kernel = 2 * int(3 * blur_sigma) + 1
    blurred = TF.gaussian_blur(images, [kernel, kernel], [blur_sigma, blur_sigma])
    deletion, insertion = [], []
    for step in range(steps + 1):
        shown = (rank < round(step / steps * height * width)).to(images.dtype)  # pixels changed so far
        deletion.append(target_probability(model, images * (1 - shown), targets))
        insertion.append(target_probability(model, blurred * (1 - shown) + images * shown, targets))
    return torch.stack(deletion, dim=1), torch.stack(insertion, dim=1)


def faithfulness(
    model: nn.Module, images: Tensor, heatmaps: Tensor, targets: Tensor, *, steps: int = 32
) -> Faithfulness:
    """All four scores for a batch of images, their heatmaps (B, H, W) and the explained classes."""
    expected = (images.shape[0], *images.shape[-2:])
    if heatmaps.shape != expected:
        raise ValueError(f"heatmaps must be (B, H, W) = {expected}, got {tuple(heatmaps.shape)}")
    drop, increase = confidence_change(model, images, heatmaps, targets)
    deletion, insertion = deletion_insertion(model, images, heatmaps, targets, steps=steps)
    return Faithfulness(drop, increase, area_under(deletion), area_under(insertion))
