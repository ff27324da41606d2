"""HiResCAM (Draelos and Carin, 2020): gradients multiply activations element-wise instead of being
averaged first, so the map shows exactly the locations the score depends on."""

from torch import Tensor

from models.cam.base import BaseCAM, require_gradients
from models.cam.registry import register_cam


@register_cam("hirescam")
class HiResCAM(BaseCAM):
    def cam_image(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        return (require_gradients(gradients) * activations).sum(dim=1)
