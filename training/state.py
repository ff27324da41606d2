"""The resume file: everything needed to continue a run after its last completed epoch.

It holds only tensors and plain containers (RNG states included, as tensors), so it is read with
``torch.load(weights_only=True)``, which cannot run code from a tampered file.
"""

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import atomic_save

FORMAT = "trashcam.resume"
VERSION = 1


class ResumeError(Exception):
    """A resume file is missing, unreadable or not one of ours."""


@dataclass
class ResumeState:
    """The run after ``epoch`` completed epochs."""

    config: dict[str, Any]
    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    history: list[dict[str, float]]
    best_val_accuracy: float
    best_epoch: int
    manifest_digest: str
    #: The running mean of the last epochs' weights (``AveragedModel.state_dict``), when the run keeps one.
    averaged: dict[str, torch.Tensor] | None = None


def save_resume_state(path: str | os.PathLike[str], state: ResumeState) -> None:
    """Atomically write ``state`` (model weights moved to the CPU)."""
    # Not dataclasses.asdict: it would deep-copy every tensor.
    payload = {f.name: getattr(state, f.name) for f in fields(state)}
    payload["model"] = {name: tensor.detach().cpu() for name, tensor in state.model.items()}
    if state.averaged is not None:
        payload["averaged"] = {name: tensor.detach().cpu() for name, tensor in state.averaged.items()}
    atomic_save({"format": FORMAT, "version": VERSION, **payload}, path)


def load_resume_state(path: str | os.PathLike[str]) -> ResumeState:
    """Read a resume file with ``weights_only=True``, onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"{path}: no resume file (was the run started?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ResumeError(f"{path}: unreadable resume file: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise ResumeError(f"{path}: not a {FORMAT} version {VERSION} file")
    try:
        return ResumeState(
            **{key: value for key, value in payload.items() if key not in ("format", "version")}
        )
    except TypeError as error:
        raise ResumeError(f"{path}: malformed resume file: {error}") from error
