from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models.checkpoint import (
    CheckpointError,
    ModelSpec,
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
    state_dict_sha256,
)
from models.transforms import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def make_spec(arch: str = "simple_cnn", **overrides: object) -> ModelSpec:
    fields: dict[str, object] = {
        "arch": arch,
        "class_names": CLASSES,
        "input_size": 32,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "arch_kwargs": {"width": 4} if arch == "simple_cnn" else {},
        "recipe": {"optimizer": "adam", "lr": 0.001, "epochs": 2},
        "metrics": {"test_accuracy": 0.5},
    }
    fields.update(overrides)
    return ModelSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, ModelSpec]:
    spec = make_spec()
    model = models.create_model(spec.arch, num_classes=spec.num_classes, **spec.arch_kwargs).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, spec)
    return path, model, spec


def test_round_trip_restores_spec_and_function(saved: tuple[Path, torch.nn.Module, ModelSpec]) -> None:
    path, model, spec = saved
    loaded, loaded_spec = load_model(path)
    assert loaded_spec == spec
    assert not loaded.training
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_save_returns_the_digest_that_load_verifies(tmp_path: Path) -> None:
    model = models.create_model("simple_cnn", width=4)
    digest = save_checkpoint(tmp_path / "m.pt", model, make_spec())
    assert digest == state_dict_sha256(model.state_dict())
    assert load_checkpoint(tmp_path / "m.pt").sha256 == digest


def test_half_precision_checkpoint_keeps_shared_weights_shared(tmp_path: Path) -> None:
    spec = make_spec("shared_se_resnet50")
    model = models.create_model(spec.arch).eval()
    save_checkpoint(tmp_path / "fp32.pt", model, spec)
    save_checkpoint(tmp_path / "fp16.pt", model, spec, dtype=torch.float16)
    # fp16 halves the weights; a shared SE module stored once per block would undo that.
    params = sum(p.numel() for p in model.parameters())
    assert (tmp_path / "fp16.pt").stat().st_size < params * 2 * 1.05
    assert (tmp_path / "fp16.pt").stat().st_size < 0.55 * (tmp_path / "fp32.pt").stat().st_size
    loaded, _ = load_model(tmp_path / "fp16.pt")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=0.05, rtol=0.05)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_refused_naming_it(saved: tuple[Path, torch.nn.Module, ModelSpec]) -> None:
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path.name}: unreadable checkpoint"):
        load_checkpoint(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"definitely not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match=r"garbage\.pt: unreadable checkpoint"):
        load_checkpoint(path)


def test_other_torch_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save(models.create_model("simple_cnn", width=4).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"state.pt: not a trashcam.checkpoint file"):
        load_checkpoint(path)


def test_altered_weights_fail_the_checksum(saved: tuple[Path, torch.nn.Module, ModelSpec]) -> None:
    path = saved[0]
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc3.bias"][0] += 1.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"model.pt: checksum mismatch"):
        load_checkpoint(path)


def test_flipped_bytes_are_refused(saved: tuple[Path, torch.nn.Module, ModelSpec]) -> None:
    path = saved[0]
    data = bytearray(path.read_bytes())
    # Damage the tensor data, which sits in the middle of the archive.
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.pt: (checksum mismatch|unreadable checkpoint)"):
        load_checkpoint(path)


def test_unsupported_version_is_refused(saved: tuple[Path, torch.nn.Module, ModelSpec]) -> None:
    path = saved[0]
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_checkpoint(path)


def test_malformed_spec_is_refused(saved: tuple[Path, torch.nn.Module, ModelSpec]) -> None:
    path = saved[0]
    payload = torch.load(path, weights_only=True)
    del payload["spec"]["class_names"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="malformed checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path: Path) -> None:
    model = models.create_model("simple_cnn", width=4)
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, model, make_spec(class_names=("a", "b", "c")))
    checkpoint = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: weights do not match model 'simple_cnn'"):
        build_model(checkpoint, source=str(path))


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unknown.pt"
    save_checkpoint(path, models.create_model("simple_cnn", width=4), make_spec(arch="vit_huge"))
    with pytest.raises(CheckpointError, match=r"unknown.pt: cannot build model 'vit_huge'"):
        load_model(path)


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(
    saved: tuple[Path, torch.nn.Module, ModelSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, model, spec = saved
    before = path.read_bytes()

    def crash(obj: object, handle: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, spec)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_spec_dict_round_trip() -> None:
    spec = make_spec()
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="invalid model spec"):
        ModelSpec.from_dict({"arch": "simple_cnn"})


def test_a_save_on_a_full_disk_says_so_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from models import files

    def torch_save_on_a_full_disk(obj: object, handle: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    model = nn.Linear(2, 2)
    spec = ModelSpec("simple_cnn", ("a", "b"), 32, (0.5,) * 3, (0.5,) * 3)
    monkeypatch.setattr(torch, "save", torch_save_on_a_full_disk)
    # With room left, the writer's own error stands: it is not a full disk.
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_checkpoint(tmp_path / "model.pt", model, spec)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=files.DISK_FULL_BYTES - 1))
    with pytest.raises(files.DiskFullError, match=r"the disk is full: no space left to write model.pt in"):
        save_checkpoint(tmp_path / "model.pt", model, spec)
    assert list(tmp_path.iterdir()) == []
