"""Tiny synthetic data sets and the tiny training setup the training tests share."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from training.config import TrainConfig, make_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")

#: A short run that still exercises every stateful part: dropout (global RNG), random crops, rotation
#: and jitter (per-sample seeds), AdamW moments, and a warm-up + cosine schedule that is mid-way at
#: the kill.
TINY_OPTIONS: dict[str, Any] = {
    "recipe": "improved",
    "model": "simple_cnn",
    "model_kwargs": {"width": 4, "dropout": 0.5},
    "input_size": 32,
    "batch_size": 8,
    "epochs": 3,
    "warmup_epochs": 1,
    "seed": 7,
    "device": "cpu",
    # fp32 wherever the tests run: bit-identical resumes are checked, and bf16 exists on some CPUs only.
    "amp": False,
}


def make_image_folder(root: Path, *, per_class: int = 8, size: int = 24, seed: int = 0) -> Path:
    """One sub-folder per class of small PNGs whose colour depends on the class (so it is learnable)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASS_NAMES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([40 * label, 255 - 40 * label, 120 + 20 * (label % 3)], dtype=np.float64)
        for index in range(per_class):
            pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}{index}.png")
    return root


def write_broken_images(folder: Path) -> list[str]:
    """An undecodable and a truncated image in ``folder``; returns their file names."""
    (folder / "garbage.jpg").write_bytes(b"this is not an image")
    good = next(folder.glob("*.png")).read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    return ["garbage.jpg", "truncated.png"]


def tiny_config(data: Path, out: Path, **changes: Any) -> TrainConfig:
    options = {**TINY_OPTIONS, **changes}
    return make_config(options.pop("recipe"), data=str(data), out=str(out), **options)


def cli_train_args(data: Path, out: Path) -> list[str]:
    """``train`` arguments equivalent to :func:`tiny_config` (workers 0)."""
    o = TINY_OPTIONS
    return [
        "train",
        f"--data={data}",
        f"--out={out}",
        f"--recipe={o['recipe']}",
        f"--model={o['model']}",
        f"--model-kwargs={json.dumps(o['model_kwargs'])}",
        f"--input-size={o['input_size']}",
        f"--batch-size={o['batch_size']}",
        f"--epochs={o['epochs']}",
        f"--warmup-epochs={o['warmup_epochs']}",
        f"--seed={o['seed']}",
        f"--device={o['device']}",
        "--no-amp",
        "--workers=0",
        "--no-progress",
    ]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m training.cli ARGS`` (``trashcam-train ARGS``) in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), f"{name} differs"


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]
