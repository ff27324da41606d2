"""What a training process runs on: the names recorded with its epochs (whether bf16 is fast there:
``models.precision``)."""

import platform
from pathlib import Path
from typing import Any

import torch

from models.precision import precision_name

CPUINFO = Path("/proc/cpuinfo")


def cpu_name() -> str:
    """The processor's model name, as the kernel reports it (``platform`` elsewhere)."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A readable name for the hardware behind ``device``: the GPU's, or the CPU's with its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    """What a run records about the process that trains it (see ``training.engine``)."""
    return {
        "device": device_name(device),
        "precision": precision_name(amp),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
