import pytest
import torch

import models
from models.cam import resolve_layer


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("size", [64, 128])
def test_forward_shape(name: str, size: int) -> None:
    model = models.create_model(name, num_classes=6).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 6)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", models.list_models())
def test_backward_reaches_every_parameter(name: str) -> None:
    model = models.create_model(name, num_classes=6).train()
    logits = model(torch.randn(4, 3, 64, 64))
    loss: torch.Tensor = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_names_a_cam_layer(name: str) -> None:
    model = models.create_model(name)
    assert isinstance(model.cam_layer, str)
    assert resolve_layer(model, None) is model.get_submodule(model.cam_layer)
