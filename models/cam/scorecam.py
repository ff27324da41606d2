"""Score-CAM (Wang et al., CVPR Workshops 2020): a channel's weight is the target score of the input
masked by that channel's upsampled, min-max scaled activation, softmaxed over channels.

Gradient-free but costly: one forward pass per channel and image, run in chunks of ``batch_size``.
"""

import torch
from torch import Tensor
from torch.nn import functional as F

from models.cam.base import BaseCAM
from models.cam.registry import register_cam


@register_cam("scorecam")
class ScoreCAM(BaseCAM):
    uses_gradients = False
    # Masked copies per forward pass, in the channels-last layout, which convolves batches of 16 faster
    # than the default one on a 2-core CPU (the ceiling of bench/service_load.py); against
    # pytorch-grad-cam's Score-CAM: bench/cam_speed.py.
    batch_size = 16

    def channel_weights(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        scores = torch.empty(activations.shape[:2], device=activations.device)
        for index, (image, activation) in enumerate(zip(images, activations, strict=True)):
            masks = F.interpolate(
                activation[None], size=images.shape[-2:], mode="bilinear", align_corners=True
            )[0]
            flat = masks.flatten(1)
            low = flat.min(dim=1).values[:, None, None]
            high = flat.max(dim=1).values[:, None, None]
            masks = (masks - low) / (high - low + 1e-8)
            for start in range(0, masks.shape[0], self.batch_size):
                chunk = masks[start : start + self.batch_size, None] * image[None]
                chunk = chunk.contiguous(memory_format=torch.channels_last)
                scores[index, start : start + chunk.shape[0]] = self.forward(chunk)[:, targets[index]]
        return scores.softmax(dim=1)
