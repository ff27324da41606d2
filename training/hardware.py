"""What a training process records about itself with its epochs: the machine's names
(``models.machine``) and the precision it trained in (``models.precision``)."""

import platform
from typing import Any

import torch

from models.machine import device_name
from models.precision import precision_name


def environment(device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    """What a run records about the process that trains it (see ``training.engine``)."""
    return {
        "device": device_name(device),
        "precision": precision_name(amp),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
