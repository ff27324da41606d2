"""Optimiser, learning-rate schedule and loss built from a :class:`TrainConfig`."""

import math
from collections.abc import Collection
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from training.config import TrainConfig


def _param_groups(model: nn.Module, config: TrainConfig, head: Collection[str]) -> list[dict[str, object]]:
    """Decay the weights of convolutions and linear layers but not biases or normalisation scales,
    which weight decay only pulls toward a degenerate zero. Parameters outside ``head`` (module names)
    learn at ``config.backbone_lr`` times the rate; empty groups are left out."""
    if config.backbone_lr == 1.0:
        head = ()  # one rate: the two groups that checkpoints saved before this option hold
    groups: list[dict[str, object]] = []
    for in_head, lr in ((True, config.lr), (False, config.lr * config.backbone_lr)):
        chosen = [
            p
            for name, p in model.named_parameters()
            if p.requires_grad and (name.rsplit(".", 1)[0] in head) == in_head
        ]
        for decay in (True, False):
            params = [p for p in chosen if (p.ndim > 1) == decay]
            if params:
                groups.append(
                    {"params": params, "lr": lr, "weight_decay": config.weight_decay if decay else 0.0}
                )
    return groups


def build_optimizer(
    model: nn.Module, config: TrainConfig, head: Collection[str] = ()
) -> torch.optim.Optimizer:
    """Adam (the paper's), AdamW or SGD with momentum, at ``config.lr`` (``config.backbone_lr`` times
    that outside the ``head`` modules)."""
    groups = _param_groups(model, config, head)
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
