"""Forward hooks that capture one layer's activation for a single forward pass."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class ActivationCapture:
    """Captures what ``layer`` outputs during one forward pass, removing its hook on exit.

    With ``track_gradients`` the hook hands the rest of the network a copy of a fresh leaf tensor
    instead of the layer's output. Autograd then records nothing before the layer (parameters are
    frozen by the caller), so a backward pass from the logits stops at the layer: for the last stage
    it runs only through pooling and the classifier. Handing on a copy, not the leaf itself, lets
    later in-place operations (``ReLU(inplace=True)``) run without touching the captured values.
    """

    def __init__(self, layer: nn.Module, *, track_gradients: bool) -> None:
        self.layer = layer
        self.track_gradients = track_gradients
        self.calls = 0
        self._activation: Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor) or output.dim() != 4:
            raise ValueError(
                f"CAM layer {type(module).__name__} must output a (B, C, H, W) tensor, "
                f"got {type(output).__name__}{'' if not isinstance(output, Tensor) else tuple(output.shape)}"
            )
        self.calls += 1
        captured = output.detach()
        if self.track_gradients:
            captured.requires_grad_(True)
        self._activation = captured
        return captured.clone()

    @property
    def activation(self) -> Tensor:
        if self._activation is None:
            raise RuntimeError("the CAM layer did not run in the forward pass")
        if self.calls != 1:
            raise ValueError(
                f"the CAM layer ran {self.calls} times in one forward pass; choose a layer that runs once"
            )
        return self._activation

    def __enter__(self) -> "ActivationCapture":
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Temporarily stop ``model``'s parameters from requiring gradients; restore them on exit."""
    thawed = [p for p in model.parameters() if p.requires_grad]
    for parameter in thawed:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in thawed:
            parameter.requires_grad_(True)
