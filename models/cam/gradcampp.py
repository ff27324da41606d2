"""Grad-CAM++ (Chattopadhyay et al., WACV 2018): positive gradients weighted by second- and
third-order terms, which credits several instances of a class instead of the strongest one."""

import torch
from torch import Tensor

from models.cam.base import BaseCAM, require_gradients
from models.cam.registry import register_cam


@register_cam("gradcampp")
class GradCAMPlusPlus(BaseCAM):
    eps = 1e-6

    def channel_weights(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        grads = require_gradients(gradients)
        grads_2 = grads.pow(2)
        grads_3 = grads_2 * grads
        activation_sums = activations.sum(dim=(2, 3), keepdim=True)
        alpha = grads_2 / (2 * grads_2 + activation_sums * grads_3 + self.eps)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (grads.clamp_min(0) * alpha).sum(dim=(2, 3))
