"""What a benchmark writes beside its figures: the command that made them and the machine."""

import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from app.lanes import usable_cores


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` shows it (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_record(
    module: str, argv: Sequence[str] | None, device: torch.device, **fields: Any
) -> dict[str, Any]:
    """``{"command": "python -m MODULE ARGS", "machine": ..., **fields}``; ``argv`` None: this process's."""
    args = sys.argv[1:] if argv is None else list(argv)
    machine = f"{cpu_name()}, {usable_cores()} usable cores, torch {torch.__version__}, {device}"
    return {"command": " ".join(["python -m", module, *args]), "machine": machine, **fields}


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
