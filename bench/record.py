"""What a benchmark writes beside its figures: the command that made them and the machine."""

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.machine import machine_line


def run_record(
    module: str, argv: Sequence[str] | None, device: torch.device, **fields: Any
) -> dict[str, Any]:
    """``{"command": "python -m MODULE ARGS", "machine": ..., **fields}``; ``argv`` None: this process's."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {"command": " ".join(["python -m", module, *args]), "machine": machine_line(device), **fields}


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
