"""Every registered CAM method on every registered model, checked against pytorch-grad-cam."""

import gc
import resource

import numpy as np
import numpy.typing as npt
import pytest
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import nn

import models
from models.cam import compute_cam, get_cam_method, list_cam_methods, resolve_layer

ORACLES = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}
SIZE = 96  # ResNet's last stage is then 3x3, the simple CNN's 48x48.


def build(arch: str) -> nn.Module:
    return models.create_model(arch, num_classes=6).eval()


def every_hook(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def pearson(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def assert_same_map(ours: npt.NDArray[np.floating], reference: npt.NDArray[np.floating]) -> None:
    if reference.std() < 1e-6:  # a map the ReLU zeroed everywhere: no correlation to measure
        np.testing.assert_allclose(ours, reference, atol=1e-5)
    else:
        assert pearson(ours, reference) >= 0.99


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_every_method_has_an_oracle() -> None:
    assert set(list_cam_methods()) == set(ORACLES)


@pytest.mark.parametrize("arch", models.list_models())
@pytest.mark.parametrize("method", list_cam_methods())
def test_shape_range_device_and_logits(arch: str, method: str, images: torch.Tensor) -> None:
    model = build(arch)
    # Score-CAM runs one forward pass per channel: keep it to one small image on 2048-channel stages.
    batch = images[:1, :, :64, :64] if method == "scorecam" and arch != "simple_cnn" else images[:2]
    out = compute_cam(model, batch, method=method)
    assert out.heatmaps.shape == (batch.shape[0], *batch.shape[-2:])
    assert out.heatmaps.device == batch.device
    assert float(out.heatmaps.min()) >= 0.0
    assert float(out.heatmaps.max()) <= 1.0
    assert not out.heatmaps.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(batch))
    torch.testing.assert_close(out.targets, out.logits.argmax(dim=1))
    assert every_hook(model) == 0


@pytest.mark.parametrize("arch", models.list_models())
@pytest.mark.parametrize("method", sorted(set(list_cam_methods()) - {"scorecam"}))
def test_parity_with_pytorch_grad_cam(arch: str, method: str, images: torch.Tensor) -> None:
    model = build(arch)
    targets = [0, 3, 5]
    ours = compute_cam(model, images, method=method, targets=targets).heatmaps.numpy()
    layer = resolve_layer(model, None)
    if method == "eigencam":
        reference_maps = eigencam_references(model, layer, images)
        for index in range(len(images)):
            best = max(pearson(ours[index], ref[index]) for ref in reference_maps)
            assert best >= 0.99
        return
    with ORACLES[method](model=model, target_layers=[layer]) as oracle:
        reference = oracle(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    for index in range(len(images)):
        assert_same_map(ours[index], reference[index])


def eigencam_references(
    model: nn.Module, layer: nn.Module, images: torch.Tensor
) -> list[npt.NDArray[np.floating]]:
    """pytorch-grad-cam's Eigen-CAM computation with either sign of the principal component.

    A singular vector's sign is arbitrary (it depends on the LAPACK build); ours fixes it, theirs
    takes whatever ``np.linalg.svd`` returns, so the maps agree up to that sign.
    """
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    projection = get_2d_projection(captured[0].numpy())
    size = (images.shape[-1], images.shape[-2])
    return [scale_cam_image(np.maximum(sign * projection, 0), size) for sign in (1.0, -1.0)]


@pytest.mark.parametrize("arch", ["simple_cnn", "se_resnet50"])
def test_scorecam_parity_with_pytorch_grad_cam(arch: str, images: torch.Tensor) -> None:
    model = build(arch)
    batch = images if arch == "simple_cnn" else images[:1, :, :64, :64]
    targets = [2] * len(batch)
    ours = compute_cam(model, batch, method="scorecam", targets=targets).heatmaps.numpy()
    with ScoreCAM(model=model, target_layers=[resolve_layer(model, None)]) as oracle:
        oracle.batch_size = 64
        reference = oracle(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in targets])
    for index in range(len(batch)):
        assert_same_map(ours[index], reference[index])


@pytest.mark.parametrize("method", list_cam_methods())
def test_a_batch_gives_the_same_maps_as_single_images(method: str, images: torch.Tensor) -> None:
    model = build("simple_cnn")
    together = compute_cam(model, images, method=method, targets=[1, 2, 3]).heatmaps
    for index, target in enumerate([1, 2, 3]):
        alone = compute_cam(model, images[index : index + 1], method=method, targets=[target]).heatmaps
        torch.testing.assert_close(together[index], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(set(list_cam_methods()) - {"eigencam"}))
def test_targets_choose_the_class_explained(method: str, images: torch.Tensor) -> None:
    model = build("simple_cnn")
    first = compute_cam(model, images[:1], method=method, targets=[0])
    other = compute_cam(model, images[:1], method=method, targets=torch.tensor([4]))
    assert first.targets.tolist() == [0]
    assert other.targets.tolist() == [4]
    assert not torch.allclose(first.heatmaps, other.heatmaps)


def test_none_entries_explain_the_predicted_class(images: torch.Tensor) -> None:
    model = build("simple_cnn")
    predicted = compute_cam(model, images).targets
    mixed = compute_cam(model, images, targets=[None, 4, None])
    assert mixed.targets.tolist() == [int(predicted[0]), 4, int(predicted[2])]


@pytest.mark.parametrize("method", list_cam_methods())
@pytest.mark.parametrize(
    ("targets", "message"),
    [([0], "expected 2 targets"), ([0, 6], r"must be in \[0, 5\]"), ([-1, 0], r"must be in \[0, 5\]")],
)
def test_bad_targets_raise_and_release_the_hook(
    method: str, targets: list[int], message: str, images: torch.Tensor
) -> None:
    model = build("simple_cnn")
    with pytest.raises(ValueError, match=message):
        compute_cam(model, images[:2], method=method, targets=targets)
    assert every_hook(model) == 0
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_method_and_layer_are_refused(images: torch.Tensor) -> None:
    model = build("resnet50")
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcam3'; known methods: eigencam, gradcam"):
        compute_cam(model, images, method="gradcam3")
    with pytest.raises(ValueError, match=r"unknown layer 'layer9'.*layer4"):
        compute_cam(model, images, layer="layer9")
    assert every_hook(model) == 0


def test_layer_by_name_or_module(images: torch.Tensor) -> None:
    model = build("resnet50")
    by_name = compute_cam(model, images[:1], layer="layer3", targets=[1]).heatmaps
    by_module = compute_cam(model, images[:1], layer=model.get_submodule("layer3"), targets=[1]).heatmaps
    assert by_name.shape == (1, SIZE, SIZE)
    torch.testing.assert_close(by_name, by_module)


def test_a_layer_that_runs_twice_is_refused(images: torch.Tensor) -> None:
    model = build("shared_se_resnet50")
    with pytest.raises(ValueError, match="ran 3 times"):
        compute_cam(model, images[:1], layer="layer1.0.attn")
    assert every_hook(model) == 0


def test_in_place_relu_after_the_layer_gives_the_same_map_as_out_of_place() -> None:
    def network(inplace: bool) -> nn.Sequential:
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        ).eval()

    batch = torch.randn(2, 3, 16, 16)
    for method in list_cam_methods():
        in_place = compute_cam(network(True), batch, method=method, layer="0")
        out_of_place = compute_cam(network(False), batch, method=method, layer="0")
        torch.testing.assert_close(in_place.heatmaps, out_of_place.heatmaps)
        torch.testing.assert_close(in_place.logits, out_of_place.logits)


def test_backward_stops_at_the_target_layer_and_computes_no_parameter_gradient(images: torch.Tensor) -> None:
    model = build("se_resnet50")
    stem_backward_calls: list[int] = []
    model.get_submodule("conv1").register_full_backward_hook(lambda m, gi, go: stem_backward_calls.append(1))
    # The probe can fire: a plain backward through the whole network reaches the stem.
    model(images[:1].requires_grad_()).sum().backward()
    assert stem_backward_calls == [1]
    model.zero_grad(set_to_none=True)
    stem_backward_calls.clear()

    get_cam_method("gradcam")(model)(images[:1])
    assert stem_backward_calls == []
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_a_thousand_calls_leave_no_hooks_and_no_growth() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    batch = torch.randn(2, 3, 8, 8)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if type(obj) in (torch.Tensor, nn.Parameter))

    for _ in range(50):  # warm up allocator caches
        compute_cam(model, batch, layer="0")
    tensors_before = live_tensors()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for call in range(1000):
        compute_cam(model, batch, layer="0")
        if call % 7 == 0:
            with pytest.raises(ValueError, match="expected 2 targets"):
                compute_cam(model, batch, layer="0", targets=[1])
    assert every_hook(model) == 0
    assert live_tensors() == tensors_before
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 20_000  # KiB
