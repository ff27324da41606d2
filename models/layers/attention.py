"""Channel attention: squeeze-and-excitation and the factory that picks it by name.

Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018): global average
pooling squeezes each channel to one number, a two-layer bottleneck (reduction 16) with a sigmoid
turns those into per-channel gates, and the input is rescaled by them.
"""

from torch import Tensor, nn


class SqueezeExcite(nn.Module):
    """SE block as in the reference SE-ResNet: 1x1 convolutions with biases, ReLU, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < reduction:
            raise ValueError(f"SE needs at least {reduction} channels, got {channels}")
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.fc2(self.relu(self.fc1(scale)))
        return x * self.gate(scale)


# "shared" builds the same module as "se"; what differs is that the network builds it once per
# stage and hands that one object to every block of the stage (see models.resnet).
_ATTN_LAYERS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "se": SqueezeExcite,
    "shared": SqueezeExcite,
}


def list_attn_layers() -> list[str]:
    """Names accepted by :func:`create_attn`."""
    return list(_ATTN_LAYERS)


def create_attn(name: str, channels: int) -> nn.Module | None:
    """Attention module ``name`` for ``channels`` channels, or None for ``"none"``."""
    try:
        layer = _ATTN_LAYERS[name]
    except KeyError:
        raise ValueError(
            f"unknown attention layer {name!r}; known: {', '.join(list_attn_layers())}"
        ) from None
    return None if layer is None else layer(channels)
