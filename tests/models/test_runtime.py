"""The compiled runtime (models.runtime): the shipped model on OpenVINO against eager on real photos, the
closed-form CAMs against eager's backward passes, the cache, and the fallback to torch."""

import io
import logging
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

import models
from core.settings import Settings
from models import runtime
from models.cam import FEATURE_MAP_METHODS, PER_CHANNEL_METHODS, list_cam_methods
from models.checkpoint import ModelSpec
from models.fusion import fold_batch_norms
from models.precision import choose_precision
from models.predictor import Predictor
from models.resnet import ResNet
from models.runtime import (
    NETWORK_FILE,
    CompiledNetwork,
    RuntimeOptions,
    RuntimeUnavailableError,
    compile_model,
)
from models.transforms import IMAGENET_MEAN, IMAGENET_STD

SHIPPED = Settings().shipped_model_path
TRASHNET = Path(__file__).resolve().parents[2] / "data" / "trashnet-112.tar.gz"
CPU = torch.device("cpu")


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Two real TrashNet photos of each class."""
    chosen: dict[str, int] = {}
    images = []
    with tarfile.open(TRASHNET) as tar:
        for member in tar.getmembers():
            label = Path(member.name).parent.name
            if member.isfile() and member.name.endswith(".jpg") and chosen.get(label, 0) < 2:
                chosen[label] = chosen.get(label, 0) + 1
                data = tar.extractfile(member)
                assert data is not None
                images.append(Image.open(io.BytesIO(data.read())).convert("RGB"))
    assert len(images) == 12
    return images


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime-cache")


def shipped(precision: str, cache: Path, backend: str = "openvino") -> Predictor:
    return Predictor.from_checkpoint(
        str(SHIPPED),
        name="shipped",
        version="builtin",
        device=CPU,
        precision=choose_precision(CPU, precision),
        runtime=RuntimeOptions(backend, cache, streams=1, threads=2),
    )


@pytest.fixture(scope="module")
def eager() -> Predictor:
    return shipped("fp32", Path("unused"), backend="torch")


@pytest.fixture(scope="module")
def compiled_fp32(cache: Path) -> Predictor:
    return shipped("fp32", cache)


@pytest.fixture(scope="module")
def compiled_auto(cache: Path, compiled_fp32: Predictor) -> Predictor:
    # After compiled_fp32, so that it reads the conversion from the cache.
    return shipped("auto", cache)


def test_the_shipped_model_runs_on_openvino_and_answers_as_eager(
    eager: Predictor, compiled_fp32: Predictor, compiled_auto: Predictor, photos: list[Image.Image]
) -> None:
    assert (eager.backend, compiled_fp32.backend, compiled_auto.backend) == ("torch", "openvino", "openvino")
    expected = eager.classify(photos)
    exact = compiled_fp32.classify(photos)
    assert exact.backends == ("openvino",) * len(photos)
    assert torch.allclose(exact.probabilities, expected.probabilities, atol=1e-4)
    assert exact.distances is not None
    assert expected.distances is not None
    assert torch.allclose(exact.distances, expected.distances, atol=1e-4)
    # bf16 where this CPU has it: the same classes, probabilities within a bf16 rounding's reach.
    fast = compiled_auto.classify(photos)
    assert torch.equal(fast.probabilities.argmax(1), expected.probabilities.argmax(1))
    assert float((fast.probabilities - expected.probabilities).abs().max()) < 0.05


@pytest.mark.parametrize("method", sorted(FEATURE_MAP_METHODS))
def test_cams_from_the_runtime_feature_map_match_eager_backward_passes(
    method: str, eager: Predictor, compiled_auto: Predictor, photos: list[Image.Image]
) -> None:
    expected = eager.explain(photos, method=method)
    got = compiled_auto.explain(photos, method=method)
    assert got.backends == ("openvino",) * len(photos)
    assert torch.equal(got.targets, expected.targets)
    for ours, theirs in zip(got.heatmaps, expected.heatmaps, strict=True):
        assert pearson(ours, theirs) >= 0.999


def test_a_chosen_class_and_the_last_stage_by_name_are_explained_on_the_runtime(
    eager: Predictor, compiled_auto: Predictor, photos: list[Image.Image]
) -> None:
    targets = [index % 6 for index in range(len(photos))]
    expected = eager.explain(photos, targets=targets)
    got = compiled_auto.explain(photos, targets=targets, layer="layer4")
    assert got.targets.tolist() == targets
    assert got.backends[0] == "openvino"
    assert min(pearson(a, b) for a, b in zip(got.heatmaps, expected.heatmaps, strict=True)) >= 0.999


def test_other_layers_run_on_torch_and_say_so(compiled_auto: Predictor, photos: list[Image.Image]) -> None:
    assert compiled_auto.explain(photos[:1], layer="layer3").backends == ("torch",)


def test_fingerprints_on_the_runtime_are_the_eager_fp32_hashes(
    eager: Predictor, compiled_auto: Predictor, photos: list[Image.Image]
) -> None:
    expected = eager.fingerprint(photos)
    got = compiled_auto.fingerprint(photos)
    assert got.hashes == expected.hashes
    assert torch.allclose(got.embeddings, expected.embeddings, atol=1e-4)
    assert got.backends[0] == "openvino"


def test_lanes_run_side_by_side_each_on_its_own_inference_request(
    compiled_auto: Predictor, photos: list[Image.Image]
) -> None:
    lanes = [compiled_auto.replica(index) for index in range(3)]
    runtimes = [lane.runtime for lane in lanes]
    assert all(runtime is not None for runtime in runtimes)
    assert len({id(runtime._requests) for runtime in runtimes if runtime is not None}) == 3
    expected = compiled_auto.classify(photos).probabilities
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda lane: [lane.classify(photos) for _ in range(4)], lanes))
    for runs in results:
        for scores in runs:
            assert torch.equal(scores.probabilities, expected)


def test_every_cam_method_is_either_of_the_feature_map_or_per_channel() -> None:
    assert set(list_cam_methods()) == FEATURE_MAP_METHODS | PER_CHANNEL_METHODS
    assert not FEATURE_MAP_METHODS & PER_CHANNEL_METHODS


def small_resnet(seed: int = 0) -> ResNet:
    """A one-block-per-stage SE-ResNet: the shipped model's head, converted in a second."""
    torch.manual_seed(seed)
    model = ResNet((1, 1, 1, 1), num_classes=6, attn="se").eval()
    fold_batch_norms(model)
    return model


def options(cache: Path) -> RuntimeOptions:
    return RuntimeOptions("openvino", cache, streams=1, threads=1)


def compiled_in(
    cache: Path, model: ResNet, *, input_size: int = 64, sha256: str = "a" * 64
) -> CompiledNetwork:
    """``model`` compiled in fp32 with its conversion cached in ``cache``, as the weights ``sha256``."""
    return compile_model(model, input_size=input_size, sha256=sha256, options=options(cache), dtype=None)


def counting_conversions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    convert = runtime.convert_network

    def counted(*args: object) -> object:
        calls.append(1)
        return convert(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "convert_network", counted)
    return calls


def test_a_conversion_is_cached_by_weights_and_runtime_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_conversions(monkeypatch)
    model = small_resnet()
    compiled_in(tmp_path, model)
    compiled_in(tmp_path, model)
    assert len(calls) == 1  # the second start read the cache
    # New weights are a new key; so is a new OpenVINO.
    compiled_in(tmp_path, small_resnet(1), sha256="b" * 64)
    monkeypatch.setattr(runtime, "openvino_version", lambda: "2099.1.0")
    compiled_in(tmp_path, model)
    assert len(calls) == 3
    assert len(list((tmp_path / "openvino").glob(f"*/{NETWORK_FILE}"))) == 3


def test_a_cached_conversion_of_other_weights_is_converted_again_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache of sha "a" holds another model's conversion (a damaged or swapped cache).
    compiled_in(tmp_path, small_resnet(1))
    calls = counting_conversions(monkeypatch)
    model = small_resnet(0)
    compiled = compiled_in(tmp_path, model)
    assert len(calls) == 1
    probe = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(compiled(probe, exact=True).logits, model(probe), atol=1e-4)
    # ... and the good conversion replaced the bad one.
    compiled_in(tmp_path, model)
    assert len(calls) == 1


def test_an_unreadable_cache_is_converted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_resnet()
    compiled_in(tmp_path, model)
    (network,) = (tmp_path / "openvino").glob(f"*/{NETWORK_FILE}")
    network.write_text("<net>truncated")
    calls = counting_conversions(monkeypatch)
    compiled_in(tmp_path, model)
    assert len(calls) == 1
    # ... and cached again in its place: the next start reads it.
    compiled_in(tmp_path, model)
    assert len(calls) == 1


def test_the_same_weights_at_another_input_size_are_another_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_conversions(monkeypatch)
    model = small_resnet()
    compiled_in(tmp_path, model)
    compiled = compiled_in(tmp_path, model, input_size=96)
    assert len(calls) == 2
    assert compiled(torch.randn(1, 3, 96, 96)).logits.shape == (1, 6)


def test_a_network_that_fails_to_compile_or_cache_is_a_reason_to_run_on_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuses(*args: object, **kwargs: object) -> object:
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp: no CPU plugin")

    monkeypatch.setattr(runtime._Compiled, "compiled", refuses)
    with pytest.raises(RuntimeUnavailableError, match=r"OpenVINO could not run the model: .*no CPU plugin"):
        compiled_in(tmp_path, small_resnet())
    monkeypatch.undo()

    def cannot_write(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Can't open bin file for writing")

    monkeypatch.setattr(runtime, "_save", cannot_write)
    with caplog.at_level(logging.WARNING, logger="models.runtime"):
        compiled = compiled_in(tmp_path, small_resnet())
    assert compiled(torch.randn(1, 3, 64, 64)).logits.shape == (1, 6)
    assert "the conversion is not cached (the next start converts again)" in caplog.text


def small_predictor(cache: Path | None) -> Predictor:
    spec = ModelSpec(
        arch="se_resnet50", class_names=tuple("abcdef"), input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    runtime_options = None if cache is None else options(cache)
    return Predictor(small_resnet(), spec, name="small", version="v1", device=CPU, runtime=runtime_options)


@pytest.mark.parametrize("method", sorted(PER_CHANNEL_METHODS))
def test_per_channel_methods_run_their_masked_passes_on_the_runtime(method: str, tmp_path: Path) -> None:
    image = Image.fromarray(torch.randint(0, 256, (80, 96, 3), dtype=torch.uint8).numpy())
    expected = small_predictor(None).explain([image], method=method)
    got = small_predictor(tmp_path).explain([image], method=method)
    assert got.backends == ("openvino",)
    assert torch.equal(got.targets, expected.targets)
    assert pearson(got.heatmaps[0], expected.heatmaps[0]) >= 0.999


def test_a_model_that_does_not_convert_runs_on_torch_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails(*args: object) -> object:
        raise RuntimeError("unsupported operation aten::frobnicate")

    monkeypatch.setattr(runtime, "convert_network", fails)
    spec_model = small_resnet()
    spec = ModelSpec(
        arch="se_resnet50", class_names=tuple("abcdef"), input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    with caplog.at_level(logging.WARNING, logger="models.predictor"):
        predictor = Predictor(
            spec_model, spec, name="site", version="v1", device=CPU, runtime=options(tmp_path)
        )
    assert predictor.backend == "torch"
    assert predictor.runtime is None
    (line,) = [record.getMessage() for record in caplog.records]
    assert line.startswith("site:v1 runs on torch: OpenVINO could not convert the model")
    assert "aten::frobnicate" in line
    image = Image.new("RGB", (80, 80), (120, 90, 60))
    assert predictor.classify([image]).backends == ("torch",)


def test_a_head_that_is_not_pooling_and_one_linear_layer_stays_on_torch() -> None:
    with pytest.raises(RuntimeUnavailableError, match="no forward_features"):
        runtime.linear_head(models.create_model("simple_cnn", num_classes=6, width=4).eval(), 32)

    class Doubled(ResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    odd = Doubled((1, 1, 1, 1), num_classes=6, attn="se").eval()
    with pytest.raises(RuntimeUnavailableError, match="not one linear layer"):
        runtime.linear_head(odd, 64)


def test_the_backend_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRASHCAM_INFERENCE_BACKEND", "tensorrt")
    with pytest.raises(ValidationError, match="inference_backend"):
        Settings()
    with pytest.raises(ValueError, match="unknown inference backend 'onnx'"):
        RuntimeOptions("onnx")
    with pytest.raises(ValueError, match="runs on the CPU, not on cuda"):
        RuntimeOptions("openvino").compiled_on(torch.device("cuda"))
    assert not RuntimeOptions("auto").compiled_on(torch.device("cuda"))
    assert RuntimeOptions("auto").compiled_on(CPU)
    assert not RuntimeOptions("torch").compiled_on(CPU)
