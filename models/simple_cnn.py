"""The paper's baseline CNN (Bai and Joe, section 2.1): two convolutions, two poolings, three FC layers."""

from typing import Any

from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from models.registry import ModelOptions, register_model


class SimpleCNN(nn.Module):
    """conv-relu-maxpool, conv-relu-adaptive maxpool, then three fully connected layers.

    The second pooling is adaptive so that the classifier sees 6x6 maps at any input size.
    """

    #: The layer Grad-CAM explains by default: the rectified maps of the last convolution.
    cam_layer = "relu2"
    #: The classifier; its input is the last hidden layer's output (``models.fingerprint``).
    classifier_layer = "fc3"

    def __init__(self, *, num_classes: int = 6, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=2)
        self.conv2 = nn.Conv2d(width, 2 * width, kernel_size=5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveMaxPool2d((6, 6))
        self.fc1 = nn.Linear(2 * width * 36, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x))).flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)


class SimpleCNNOptions(ModelOptions):
    width: int = Field(32, ge=1, le=256, description="channels of the first convolution (the second: 2x)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the fully connected layers")


@register_model(options=SimpleCNNOptions)
def simple_cnn(*, num_classes: int = 6, **kwargs: Any) -> SimpleCNN:
    """The paper's baseline (section 2.1): 2 convolution, 2 pooling and 3 fully connected layers."""
    return SimpleCNN(num_classes=num_classes, **kwargs)
