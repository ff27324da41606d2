import pytest
import torch

import models
from models import precision
from models.checkpoint import ModelSpec
from models.predictor import Predictor
from models.transforms import IMAGENET_MEAN, IMAGENET_STD


def test_native_bf16_follows_the_cpu_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not precision.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.cpu_has_native_bf16()
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not precision.cpu_has_native_bf16()


def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.choose_precision(cpu).name == "bf16+channels_last"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.choose_precision(cpu).name == "fp32+channels_last"
    assert precision.choose_precision(cpu, channels_last=False).name == "fp32"
    with pytest.raises(ValueError, match="no bf16 instructions"):
        precision.choose_precision(cpu, "bf16")
    with pytest.raises(ValueError, match="fp16 inference is for GPUs"):
        precision.choose_precision(cpu, "fp16")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        precision.choose_precision(cpu, "int8")


def tiny_predictor(chosen: precision.InferencePrecision) -> Predictor:
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="resnet50", class_names=tuple("abcdef"), input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    model = models.create_model("resnet50", num_classes=6)
    return Predictor(model, spec, name="tiny", version="1", device=torch.device("cpu"), precision=chosen)


def test_channels_last_and_bf16_answer_as_fp32_does() -> None:
    images = torch.rand(4, 3, 64, 64)
    fp32 = tiny_predictor(precision.InferencePrecision())
    nhwc = tiny_predictor(precision.InferencePrecision(channels_last=True))
    bf16 = tiny_predictor(precision.InferencePrecision(torch.bfloat16, channels_last=True))
    assert nhwc.inputs(images).is_contiguous(memory_format=torch.channels_last)
    assert nhwc.inputs(images[:1]).is_contiguous()
    reference = fp32.explain(images)
    for other, tolerance in ((nhwc, 1e-4), (bf16, 0.05)):
        result = other.explain(images)
        assert result.heatmaps.dtype == torch.float32
        torch.testing.assert_close(result.probabilities, reference.probabilities, atol=tolerance, rtol=0)
        assert (result.heatmaps - reference.heatmaps).abs().mean() < tolerance
        torch.testing.assert_close(other.classify(images).probabilities, result.probabilities)


def test_a_cpu_runs_a_single_photo_in_fp32_and_batches_in_the_reduced_precision() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    bf16 = precision.InferencePrecision(torch.bfloat16, channels_last=True)
    assert bf16.dtype_for(cpu, 1) is None
    assert bf16.dtype_for(cpu, precision.CPU_REDUCED_MIN_BATCH - 1) is None
    assert bf16.dtype_for(cpu, precision.CPU_REDUCED_MIN_BATCH) is torch.bfloat16
    assert bf16.dtype_for(gpu, 1) is torch.bfloat16  # a GPU keeps its precision at every size
    assert precision.InferencePrecision().dtype_for(cpu, 16) is None
    with bf16.autocast(cpu, 1):
        assert not torch.is_autocast_enabled("cpu")
    with bf16.autocast(cpu, 4):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    # A single photo answers as the fp32 model does, exactly.
    image = torch.rand(1, 3, 64, 64)
    fp32_result = tiny_predictor(precision.InferencePrecision()).classify(image).probabilities
    torch.testing.assert_close(tiny_predictor(bf16).classify(image).probabilities, fp32_result)


def test_training_uses_bf16_only_on_a_cpu_with_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.amp_dtype(torch.device("cpu"), True) == torch.bfloat16
    assert precision.amp_dtype(torch.device("cpu"), None) == torch.bfloat16
    assert precision.amp_dtype(torch.device("cpu"), False) is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.amp_dtype(torch.device("cpu"), None) is None
    with caplog.at_level("WARNING", logger="models.precision"):
        assert precision.amp_dtype(torch.device("cpu"), True) is None
    assert "no bf16 instructions; training in fp32" in caplog.text


def test_serving_and_training_follow_one_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    for native in (True, False):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        cpu = torch.device("cpu")
        assert precision.choose_precision(cpu).dtype == precision.amp_dtype(cpu, None)
        assert precision.native_dtype(cpu) == (torch.bfloat16 if native else None)
