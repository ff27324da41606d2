"""A loaded model ready to classify and explain photos: preprocessing from its spec, inference on
its device, explanations from the same forward pass."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor, nn

from models.cam import compute_cam
from models.checkpoint import ModelSpec, build_model, load_checkpoint
from models.transforms import build_eval_transform


def select_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` (or None): the GPU when there is one, else the CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


@dataclass(frozen=True)
class Explanation:
    """Probabilities (B, classes), heatmaps (B, S, S) in [0, 1] and explained classes (B,), on the CPU."""

    probabilities: Tensor
    heatmaps: Tensor
    targets: Tensor


class Predictor:
    """A model with its spec on a device; swap whole predictors to change models."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        name: str,
        version: str,
        device: torch.device,
        sha256: str = "",
    ) -> None:
        # Explanations need no parameter gradients; freezing once here spares every call.
        self.model = model.to(device).eval().requires_grad_(False)
        self.spec = spec
        self.name = name
        self.version = version
        self.device = device
        self.sha256 = sha256
        self._transform = build_eval_transform(spec)

    @classmethod
    def from_checkpoint(
        cls, path: str, *, name: str, version: str | None, device: torch.device
    ) -> "Predictor":
        """Load a checkpoint file; ``version`` None names it by its weights' digest."""
        checkpoint = load_checkpoint(path)
        model = build_model(checkpoint, source=path)
        version = version or checkpoint.sha256[:12]
        return cls(
            model, checkpoint.spec, name=name, version=version, device=device, sha256=checkpoint.sha256
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        return torch.stack([self._transform(image.convert("RGB")) for image in images]).to(self.device)

    def classify(self, images: Sequence[Image.Image]) -> Tensor:
        """Class probabilities (B, classes) on the CPU."""
        batch = self.preprocess(images)
        with torch.inference_mode():
            return self.model(batch).float().softmax(dim=1).cpu()

    def explain(
        self,
        images: Sequence[Image.Image],
        *,
        method: str = "gradcam",
        targets: Sequence[int | None] | None = None,
        layer: str | None = None,
    ) -> Explanation:
        """Probabilities and CAM heatmaps from one forward pass."""
        out = compute_cam(self.model, self.preprocess(images), method=method, targets=targets, layer=layer)
        return Explanation(
            probabilities=out.logits.float().softmax(dim=1).cpu(),
            heatmaps=out.heatmaps.float().cpu(),
            targets=out.targets.cpu(),
        )
