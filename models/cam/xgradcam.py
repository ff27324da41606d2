"""XGrad-CAM (Fu et al., BMVC 2020): gradients weighted by the normalised activation, an axiom-based
weighting that satisfies sensitivity and conservation."""

from torch import Tensor

from models.cam.base import BaseCAM, require_gradients
from models.cam.registry import register_cam


@register_cam("xgradcam")
class XGradCAM(BaseCAM):
    eps = 1e-7

    def channel_weights(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        activation_sums = activations.sum(dim=(2, 3), keepdim=True)
        return (require_gradients(gradients) * activations / (activation_sums + self.eps)).sum(dim=(2, 3))
