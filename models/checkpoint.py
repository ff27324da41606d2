"""Checkpoints that carry their own spec, so every consumer rebuilds the same model and preprocessing.

A checkpoint file is a ``torch.save`` of a plain dict (loadable with ``weights_only=True``)::

    {"format": "trashcam.checkpoint", "version": 1, "spec": {...}, "state_dict": {...},
     "sha256": "<digest of the state_dict's names, dtypes, shapes and bytes>"}

The digest is checked on every load, so a file whose weights were altered or damaged is refused even
when it still unpickles.
"""

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.files import atomic_open
from models.registry import create_model

FORMAT = "trashcam.checkpoint"
VERSION = 1

StateDict = dict[str, torch.Tensor]


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, corrupt, or does not match its model."""


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a trained model and feed it images the way it was trained."""

    arch: str
    class_names: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: A ``models.calibration.Calibration`` as a dict: temperature and "unsure" thresholds (empty: none).
    calibration: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=_utc_now)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("class_names", "mean", "std"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        try:
            return cls(
                arch=str(data["arch"]),
                class_names=tuple(str(name) for name in data["class_names"]),
                input_size=int(data["input_size"]),
                mean=_triple(data["mean"]),
                std=_triple(data["std"]),
                arch_kwargs=dict(data.get("arch_kwargs", {})),
                recipe=dict(data.get("recipe", {})),
                metrics=dict(data.get("metrics", {})),
                calibration=dict(data.get("calibration") or {}),
                created_at=str(data.get("created_at", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"invalid model spec: {error!r}") from error


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its spec, its (verified) weights and their digest."""

    spec: ModelSpec
    state_dict: StateDict
    sha256: str


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Digest of a state dict's names, dtypes, shapes and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a whole file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A reader sees either the old file or the complete new one, never a partial write, even if the
    process is killed mid-save.
    """
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def _cast_floating(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> StateDict:
    """Cast floating tensors to ``dtype``, keeping tensors that were shared shared."""
    cast: dict[tuple[int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
    out: StateDict = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach()
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if key not in cast:
            cast[key] = tensor.to(dtype)
        out[name] = cast[key]
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | Mapping[str, torch.Tensor],
    spec: ModelSpec,
    *,
    dtype: torch.dtype | None = None,
) -> str:
    """Atomically write ``model``'s weights and ``spec`` to ``path``; return the weights' sha256.

    ``dtype`` (e.g. ``torch.float16``) stores floating weights at that precision; loading casts them
    back into the model's own parameters.
    """
    state_dict = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state_dict = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
    if dtype is not None:
        state_dict = _cast_floating(state_dict, dtype)
    sha256 = state_dict_sha256(state_dict)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "state_dict": state_dict,
        "sha256": sha256,
    }
    atomic_save(payload, path)
    return sha256


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint; raise :class:`CheckpointError` naming the file if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable checkpoint (corrupt or truncated): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')!r} is not supported (expected {VERSION})"
        )
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        state_dict = payload["state_dict"]
        expected = str(payload["sha256"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: malformed checkpoint: {error}") from error
    actual = state_dict_sha256(state_dict)
    if actual != expected:
        raise CheckpointError(
            f"{path}: checksum mismatch (weights are damaged or were altered): "
            f"expected {expected}, got {actual}"
        )
    return Checkpoint(spec=spec, state_dict=state_dict, sha256=actual)


def build_model(checkpoint: Checkpoint, *, source: str = "checkpoint") -> nn.Module:
    """Instantiate the checkpoint's architecture, load its weights, and return it in eval mode.

    ``source`` names the checkpoint in error messages.
    """
    spec = checkpoint.spec
    try:
        model = create_model(spec.arch, num_classes=spec.num_classes, **spec.arch_kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: cannot build model {spec.arch!r}: {error}") from error
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: weights do not match model {spec.arch!r}: {error}") from error
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelSpec]:
    """Load, verify and build the model stored at ``path`` (on the CPU, in eval mode)."""
    checkpoint = load_checkpoint(path)
    return build_model(checkpoint, source=str(path)), checkpoint.spec
