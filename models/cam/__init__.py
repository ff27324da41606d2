"""Class activation maps: Grad-CAM and its family behind one entry point, :func:`compute_cam`."""

from torch import Tensor, nn

# Importing the method files registers them.
from models.cam import eigencam, gradcam, gradcampp, hirescam, layercam, scorecam, xgradcam  # noqa: F401
from models.cam.base import BaseCAM, CamOutput, Targets, resolve_layer
from models.cam.registry import get_cam_method, list_cam_methods, register_cam

#: Methods that run a forward pass per channel of the explained layer (2,048 for SE-ResNet-50's last
#: stage): about a minute a photo on 2 CPU cores.
PER_CHANNEL_METHODS = frozenset({"scorecam"})
#: Methods that need only the explained layer's activations and the gradients of the target scores with
#: respect to them: for the last stage of a model with a pooled linear head, both come from a forward
#: pass alone (``models.runtime.head_gradients``). Named one by one: a method added later runs on eager
#: until it is shown to need nothing else. The per-channel methods need the activations and forward
#: passes, which a compiled network runs too.
FEATURE_MAP_METHODS = frozenset({"gradcam", "gradcampp", "hirescam", "layercam", "xgradcam", "eigencam"})


def compute_cam(
    model: nn.Module,
    images: Tensor,
    *,
    method: str = "gradcam",
    targets: Targets = None,
    layer: str | nn.Module | None = None,
) -> CamOutput:
    """Explain ``model``'s decisions on a normalised batch ``images`` (B, 3, H, W).

    Returns ``(heatmaps, logits, targets)``: heatmaps (B, H, W) at the input size with values in
    [0, 1], on the model's device; the logits of the same forward pass; and the class explained for
    each image (``targets``, or the predicted class where it is None). ``layer`` is a submodule or its
    dotted path, by default the model's last convolutional stage (its ``cam_layer``). The model should
    be in eval mode.
    """
    return get_cam_method(method)(model, layer)(images, targets)


__all__ = [
    "FEATURE_MAP_METHODS",
    "PER_CHANNEL_METHODS",
    "BaseCAM",
    "CamOutput",
    "compute_cam",
    "get_cam_method",
    "list_cam_methods",
    "register_cam",
    "resolve_layer",
]
