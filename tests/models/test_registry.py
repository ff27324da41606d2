from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import models
from models.layers import SqueezeExcite, create_attn, list_attn_layers
from models.resnet import Bottleneck, ResNet

# Reference counts at 1000 classes: torchvision's ResNet-50 and the reference SE-ResNet-50
# (Hu et al., 2018); shared SE adds one SE module per stage instead of one per block.
PARAMETERS_AT_1000_CLASSES = {
    "resnet50": 25_557_032,
    "se_resnet50": 28_088_024,
    "shared_se_resnet50": 26_257_432,
}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_has_the_papers_networks() -> None:
    assert {"simple_cnn", "resnet50", "se_resnet50", "shared_se_resnet50"} <= set(models.list_models())


def test_unknown_model_raises_listing_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet51'.*se_resnet50"):
        models.create_model("resnet51")


@pytest.mark.parametrize(("name", "expected"), PARAMETERS_AT_1000_CLASSES.items())
def test_parameter_counts_match_the_references(name: str, expected: int) -> None:
    assert count_parameters(models.create_model(name, num_classes=1000)) == expected


def test_resnet50_loads_a_torchvision_state_dict_and_computes_the_same_function() -> None:
    reference = torchvision.models.resnet50().eval()
    ours = models.create_model("resnet50", num_classes=1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images))


def stages(model: ResNet) -> list[nn.Sequential]:
    return [model.layer1, model.layer2, model.layer3, model.layer4]


def test_se_resnet50_has_its_own_se_module_in_every_block() -> None:
    model = models.create_model("se_resnet50")
    assert isinstance(model, ResNet)
    attns = [block.attn for stage in stages(model) for block in stage if isinstance(block, Bottleneck)]
    assert len(attns) == 16
    assert all(isinstance(attn, SqueezeExcite) for attn in attns)
    assert len({id(attn) for attn in attns}) == 16


def test_shared_se_resnet50_shares_one_se_module_per_stage() -> None:
    model = models.create_model("shared_se_resnet50")
    assert isinstance(model, ResNet)
    per_stage = [
        {id(block.attn) for block in stage if isinstance(block, Bottleneck)} for stage in stages(model)
    ]
    assert [len(ids) for ids in per_stage] == [1, 1, 1, 1]
    assert len(set.union(*per_stage)) == 4


def test_shared_se_gradients_accumulate_from_every_block_of_the_stage() -> None:
    model = models.create_model("shared_se_resnet50")
    assert isinstance(model, ResNet)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    shared = model.layer1[0].attn
    assert shared is model.layer1[2].attn
    assert isinstance(shared, SqueezeExcite)
    grad = shared.fc1.weight.grad
    assert grad is not None
    assert torch.count_nonzero(grad) > 0


def test_resnet50_has_no_attention() -> None:
    model = models.create_model("resnet50")
    assert not any(isinstance(m, SqueezeExcite) for m in model.modules())


def test_attention_factory() -> None:
    assert list_attn_layers() == ["none", "se", "shared"]
    assert create_attn("none", 64) is None
    se = create_attn("se", 64)
    assert isinstance(se, SqueezeExcite)
    x = torch.randn(2, 64, 5, 5)
    assert se(x).shape == x.shape
    with pytest.raises(ValueError, match="unknown attention layer 'cbam'"):
        create_attn("cbam", 64)
    with pytest.raises(ValueError, match="unknown attention 'cbam'"):
        ResNet((1, 1, 1, 1), attn="cbam")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("simple_cnn", {"width": -1}, "width: Input should be greater than or equal to 1"),
        ("simple_cnn", {"width": 20000}, "width: Input should be less than or equal to 256"),
        ("simple_cnn", {"width": 4.5}, "width: Input should be a valid integer"),
        ("simple_cnn", {"dropout": 1.0}, "dropout: Input should be less than 1"),
        ("se_resnet50", {"width": 8}, "width: Extra inputs are not permitted"),
        ("vgg16", {}, "unknown model 'vgg16'"),
    ],
)
def test_options_are_checked_without_building_the_network(
    name: str, options: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import registry

    built: list[str] = []
    monkeypatch.setitem(registry._MODEL_BUILDERS, "simple_cnn", lambda **kwargs: built.append("x"))
    with pytest.raises(ValueError, match=message):
        registry.validate_model_options(name, options)
    with pytest.raises(ValueError, match=message):
        registry.create_model(name, **options)
    assert built == []
    assert registry.validate_model_options("simple_cnn", {"width": 4, "dropout": 0}) == {
        "width": 4,
        "dropout": 0.0,
    }
