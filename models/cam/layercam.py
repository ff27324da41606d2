"""LayerCAM (Jiang et al., IEEE TIP 2021): each location weighted by its own positive gradient,
which keeps fine detail when explaining shallower layers."""

from torch import Tensor

from models.cam.base import BaseCAM, require_gradients
from models.cam.registry import register_cam


@register_cam("layercam")
class LayerCAM(BaseCAM):
    def cam_image(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        return (require_gradients(gradients).clamp_min(0) * activations).sum(dim=1)
