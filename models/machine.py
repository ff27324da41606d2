"""The machine a model runs on: the cores this process may use, the CPU's and the device's names, and
the one line that every benchmark and run record says it with."""

import os
import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The processor's model name, as the kernel reports it (and ``lscpu`` shows it); ``platform``'s
    elsewhere."""
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


def machine_line(device: torch.device | None = None) -> str:
    """``"CPU NAME, N usable cores, torch X[, DEVICE]"``: which machine a figure was measured on."""
    line = f"{cpu_name()}, {usable_cores()} usable cores, torch {torch.__version__}"
    return line if device is None else f"{line}, {device}"
