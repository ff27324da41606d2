"""The class-activation-map pipeline that every method shares.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) and its relatives differ only in how they weight the channels of one
layer's activation. :class:`BaseCAM` owns everything else: the hook, the forward pass, the choice of
target class, the gradient, the ReLU, upsampling to the input size and per-image scaling to [0, 1].
"""

from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.cam.hooks import ActivationCapture, frozen_parameters

# One class per image; None (for the batch or for one image) means "the predicted class".
Targets = Sequence[int | None] | Tensor | None


class CamOutput(NamedTuple):
    """What one CAM call computed: heatmaps (B, H, W) in [0, 1], logits (B, classes), targets (B,)."""

    heatmaps: Tensor
    logits: Tensor
    targets: Tensor


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """The module to explain: ``layer`` itself, a dotted submodule path, or the model's ``cam_layer``."""
    if isinstance(layer, nn.Module):
        return layer
    if layer is None:
        layer = getattr(model, "cam_layer", None)
        if not isinstance(layer, str):
            raise ValueError(f"{type(model).__name__} has no default cam_layer; pass layer=")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        known = ", ".join(name for name, _ in model.named_children())
        raise ValueError(
            f"unknown layer {layer!r}; give a submodule path of the model, e.g. one of: {known}"
        ) from None


def resolve_targets(logits: Tensor, targets: Targets) -> Tensor:
    """One class index per image: the predicted class wherever ``targets`` (or an entry of it) is None."""
    batch, num_classes = logits.shape
    predicted = logits.argmax(dim=1)
    if targets is None:
        return predicted
    if isinstance(targets, Tensor):
        resolved = targets.to(device=logits.device, dtype=torch.long).reshape(-1)
    else:
        resolved = torch.tensor(
            [-1 if target is None else int(target) for target in targets],
            dtype=torch.long,
            device=logits.device,
        )
        if len(targets) == batch:
            chosen = torch.tensor([target is None for target in targets], device=logits.device)
            resolved = torch.where(chosen, predicted, resolved)
    if resolved.numel() != batch:
        raise ValueError(f"expected {batch} targets, one per image, got {resolved.numel()}")
    if bool(((resolved < 0) | (resolved >= num_classes)).any()):
        raise ValueError(f"target classes must be in [0, {num_classes - 1}], got {resolved.tolist()}")
    return resolved


def scale_to_unit(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Shift each map so its minimum is 0 and divide by its maximum (maps of zeros stay zero)."""
    flat = maps.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (flat.max(dim=1, keepdim=True).values + eps)
    return flat.view_as(maps)


class BaseCAM:
    """A CAM method: subclasses override :meth:`channel_weights`, or :meth:`cam_image` when their
    weights vary over space. Hooks exist only inside a call, so none outlives it, even on error."""

    #: Whether the method needs d(score)/d(activation). EigenCAM does not, and skips the backward.
    uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        forward: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.model = model
        self.layer = resolve_layer(model, layer)
        #: The logits of a batch, for methods that run forward passes of their own (Score-CAM): the
        #: model's own, or the same network compiled elsewhere (``models.runtime``).
        self.forward: Callable[[Tensor], Tensor] = forward or model

    def __call__(self, images: Tensor, targets: Targets = None) -> CamOutput:
        if images.dim() != 4:
            raise ValueError(f"images must be a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
        with (
            frozen_parameters(self.model),
            ActivationCapture(self.layer, track_gradients=self.uses_gradients) as capture,
        ):
            with torch.set_grad_enabled(self.uses_gradients):
                logits = self.model(images)
            activations = capture.activation
            target_classes = resolve_targets(logits, targets)
            gradients = None
            if self.uses_gradients:
                score = logits.gather(1, target_classes[:, None]).sum()
                (gradients,) = torch.autograd.grad(score, activations)
        heatmaps = self.heatmaps(images, activations, gradients, target_classes)
        return CamOutput(heatmaps, logits.detach(), target_classes)

    def heatmaps(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        """Heatmaps (B, H, W) in [0, 1] at the input size, from the layer's activations and the gradients
        of the target scores with respect to them: what every method shares after the passes, also for
        activations and gradients that came from elsewhere (:mod:`models.runtime`)."""
        with torch.no_grad():
            # Under autocast the layer's output is bf16 or fp16; weighting and summing 2048 channels in
            # fp32 keeps the heatmap as fine as the fp32 one.
            activations = activations.detach().float()
            gradients = None if gradients is None else gradients.float()
            cams = self.cam_image(images, activations, gradients, targets).clamp_min(0)
            cams = F.interpolate(cams[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
            return scale_to_unit(cams[:, 0])

    def cam_image(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        """Raw class activation maps (B, h, w) at the layer's resolution, before ReLU and scaling."""
        weights = self.channel_weights(images, activations, gradients, targets)
        return torch.einsum("bk,bkhw->bhw", weights, activations)

    def channel_weights(
        self, images: Tensor, activations: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        """One weight per channel and image (B, K)."""
        raise NotImplementedError


def require_gradients(gradients: Tensor | None) -> Tensor:
    if gradients is None:
        raise RuntimeError("this CAM method needs gradients; set uses_gradients = True")
    return gradients
