"""Grad-CAM (Selvaraju et al., ICCV 2017): channel weights are the spatially averaged gradients."""

from torch import Tensor

from models.cam.base import BaseCAM, require_gradients
from models.cam.registry import register_cam


@register_cam("gradcam")
class GradCAM(BaseCAM):
    def channel_weights(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        return require_gradients(gradients).mean(dim=(2, 3))
