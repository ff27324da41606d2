"""Weight arithmetic between two checkpoints of one network."""

from collections.abc import Mapping

import torch

from models.checkpoint import StateDict


def interpolate(
    start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], alpha: float
) -> StateDict:
    """``(1 - alpha) * start + alpha * end`` for every floating tensor (computed in fp32, stored in the
    end's dtype); other tensors (batch-norm step counters) are the end's."""
    mixed: StateDict = {}
    for name, target in end.items():
        if target.is_floating_point():
            value = torch.lerp(start[name].float(), target.float(), alpha)
            mixed[name] = value.to(target.dtype)
        else:
            mixed[name] = target.clone()
    return mixed
