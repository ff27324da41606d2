"""Eigen-CAM (Muhammad and Yeasin, IJCNN 2020): the first principal component of the layer's
activations. Class-agnostic and gradient-free, so it needs no backward pass."""

import torch
from torch import Tensor

from models.cam.base import BaseCAM
from models.cam.registry import register_cam


@register_cam("eigencam")
class EigenCAM(BaseCAM):
    uses_gradients = False

    def cam_image(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        batch, _, height, width = activations.shape
        # (B, h*w, K): one row per location. Centring before the SVD keeps the component from
        # simply tracking the mean activation.
        rows = activations.flatten(2).transpose(1, 2).double()
        rows = rows - rows.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(rows, full_matrices=False)
        projection = (rows @ vh[:, 0, :, None]).squeeze(2)
        # A singular vector's sign is arbitrary; orient it so that the map agrees with where the
        # layer is most active, which makes the result independent of the LAPACK in use.
        strength = activations.sum(dim=1).flatten(1).double()
        agreement = (
            (projection - projection.mean(1, keepdim=True)) * (strength - strength.mean(1, keepdim=True))
        ).sum(1)
        projection = projection * torch.where(agreement < 0, -1.0, 1.0).to(projection)[:, None]
        return projection.view(batch, height, width).to(activations.dtype)
