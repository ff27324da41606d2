"""Optimiser, learning-rate schedule and loss built from a :class:`TrainConfig`."""

import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from training.config import TrainConfig


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Decay the weights of convolutions and linear layers but not biases or normalisation scales,
    which weight decay only pulls toward a degenerate zero."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the paper's), AdamW or SGD with momentum, at ``config.lr``."""
    groups = _param_groups(model, config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (counting from 0).

    Linear warm-up over ``warmup_steps``, then constant (the paper) or cosine decay to zero.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A per-step schedule. Its state is only counters, so it resumes exactly from a state dict."""
    factor = partial(
        lr_factor,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
        schedule=config.schedule,
    )
    return LambdaLR(optimizer, factor)


def build_criterion(config: TrainConfig) -> nn.Module:
    """Cross-entropy (the paper's loss), with optional label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
