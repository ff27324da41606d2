"""Stochastic weight averaging (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
Generalization", 2018): the model kept is the mean of the weights at the end of several epochs.

``torch.optim.swa_utils.AveragedModel`` keeps the mean. Its own averaging would divide batch norm's
integer batch counters (which fails on CUDA and truncates on the CPU), so floating tensors are averaged
and counters take the latest value.
"""

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def mean_so_far(averaged: Tensor, current: Tensor, count: Tensor | int) -> Tensor:
    """The mean of ``count`` tensors so far (``averaged``) with ``current`` added; a counter's latest."""
    if not averaged.is_floating_point():
        return current
    return averaged + (current - averaged) / (count + 1)


def weight_average(model: nn.Module) -> AveragedModel:
    """A running mean of ``model``'s weights and buffers (batch-norm statistics averaged too, instead of
    recomputed: that would need a pass over training photos that replay and augmentation mix)."""
    return AveragedModel(model, avg_fn=mean_so_far, use_buffers=True)


def restart(average: AveragedModel) -> None:
    """Forget what ``average`` holds: the next update copies the weights."""
    with torch.no_grad():
        average.n_averaged.zero_()
