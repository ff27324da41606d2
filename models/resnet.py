"""ResNet-50 and its channel-attention variants.

One network, three attention settings chosen by a factory argument:

- ``resnet50``: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. Module names
  follow torchvision, so a torchvision ResNet-50 ``state_dict`` loads as is.
- ``se_resnet50``: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018: one SE module in every
  bottleneck, on the residual branch after the last BN, before the addition.
- ``shared_se_resnet50``: Bai and Joe, "Channel-attention-based deep learning for explainable image
  recognition" (sections 3.1-3.2): the blocks of a stage have the same structure, so the stage owns a
  single SE module that every one of its blocks calls (one set of weights per stage).
"""

from typing import Any

from torch import Tensor, nn

from models.layers.attention import create_attn, list_attn_layers
from models.registry import ModelOptions, register_model


class Bottleneck(nn.Module):
    """torchvision's bottleneck (stride on the 3x3 convolution) with optional channel attention."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        attn: nn.Module | None = None,
    ) -> None:
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, outplanes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        # Registered as a child even when shared: the same object under several blocks counts once
        # in parameters() and is stored once by torch.save, which keeps storages shared.
        self.attn = attn

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.attn is not None:
            out = self.attn(out)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks; ``attn`` is ``"none"``, ``"se"`` or ``"shared"``."""

    #: The layer Grad-CAM explains by default: the last convolutional stage.
    cam_layer = "layer4"
    #: The classifier; its input is the pooled features (``models.fingerprint``).
    classifier_layer = "fc"

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 1000,
        attn: str = "none",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if attn not in list_attn_layers():
            raise ValueError(f"unknown attention {attn!r}; known: {', '.join(list_attn_layers())}")
        self.attn_kind = attn
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(64, layers[0], stride=1)
        self.layer2 = self._make_stage(128, layers[1], stride=2)
        self.layer3 = self._make_stage(256, layers[2], stride=2)
        self.layer4 = self._make_stage(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual block then starts as the identity, which helps large-batch training
            # (Goyal et al., "Accurate, Large Minibatch SGD", 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _make_stage(self, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
        outplanes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != outplanes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(outplanes),
            )
        shared = create_attn("se", outplanes) if self.attn_kind == "shared" else None
        stage = []
        for index in range(blocks):
            attn = shared if self.attn_kind == "shared" else create_attn(self.attn_kind, outplanes)
            stage.append(
                Bottleneck(
                    self.inplanes,
                    planes,
                    stride=stride if index == 0 else 1,
                    downsample=downsample if index == 0 else None,
                    attn=attn,
                )
            )
            self.inplanes = outplanes
        return nn.Sequential(*stage)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class ResNetOptions(ModelOptions):
    zero_init_residual: bool = False


@register_model(options=ResNetOptions)
def resnet50(*, num_classes: int = 6, **kwargs: Any) -> ResNet:
    """ResNet-50 (He et al., 2016): bottleneck stages of 3, 4, 6 and 3 blocks."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, attn="none", **kwargs)


@register_model(options=ResNetOptions)
def se_resnet50(*, num_classes: int = 6, **kwargs: Any) -> ResNet:
    """SE-ResNet-50 (Hu et al., 2018): an SE module (reduction 16) in every bottleneck."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, attn="se", **kwargs)


@register_model(options=ResNetOptions)
def shared_se_resnet50(*, num_classes: int = 6, **kwargs: Any) -> ResNet:
    """Shared-SE ResNet-50 (Bai and Joe, sections 3.1-3.2): one SE module per stage, shared by its blocks."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, attn="shared", **kwargs)
