import copy

import pytest
import torch
from torch import nn

import models
from models.cam import compute_cam
from models.fusion import fold_batch_norms


def with_batch_statistics(model: nn.Module) -> nn.Module:
    """Batch norms that do something: running statistics and affine terms away from 0 and 1."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None
            assert module.running_var is not None
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet50", "shared_se_resnet50"])
def test_folded_batch_norms_give_the_same_logits_and_heatmaps(name: str) -> None:
    model = with_batch_statistics(models.create_model(name, num_classes=6))
    folded = copy.deepcopy(model)
    # Every convolution of the ResNet-50s is followed by its own batch norm: 53 of them.
    assert fold_batch_norms(folded) == 53
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    images = torch.randn(2, 3, 64, 64)
    before, after = compute_cam(model, images), compute_cam(folded, images)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(after.heatmaps, before.heatmaps, atol=1e-3, rtol=0)


def test_a_shared_convolution_or_one_with_other_users_is_left_alone() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)
            self.side = nn.Conv2d(3, 3, 1)
            self.side_bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shared = self.bn(self.conv(self.conv(x)))  # the conv runs twice
            side = self.side(x)
            return shared + self.side_bn(side) + side  # the side conv's output is used twice

    model = Shared().eval()
    assert fold_batch_norms(model) == 0
    assert isinstance(model.bn, nn.BatchNorm2d)
    assert isinstance(model.side_bn, nn.BatchNorm2d)


def test_folding_refuses_a_training_model() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(models.create_model("resnet50", num_classes=2))
