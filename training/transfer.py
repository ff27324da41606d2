"""Starting a network from another checkpoint's weights, matching the classifier's rows by class name.

The backbone is copied as it is. The classifier (the last layer: ``fc`` of the ResNets, ``fc3`` of the
simple CNN) has one row per class; a class that the checkpoint also has keeps its row, wherever it sits
in the new class order, and a new class keeps the fresh initialisation of the new network.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.checkpoint import Checkpoint, CheckpointError, ModelSpec


@dataclass(frozen=True)
class Transfer:
    """What a transfer kept: the classes whose head rows came from the checkpoint, and the new ones."""

    kept_classes: tuple[str, ...]
    new_classes: tuple[str, ...]
    head: tuple[str, ...]


def head_keys(state_dict: dict[str, torch.Tensor], num_classes: int) -> tuple[str, ...]:
    """The state-dict entries of the classifier: those of the last module, one row per class."""
    last = next(reversed(state_dict))
    prefix = last.rsplit(".", 1)[0] + "."
    keys = tuple(key for key in state_dict if key.startswith(prefix))
    if any(state_dict[key].shape[:1] != (num_classes,) for key in keys):
        raise CheckpointError(f"the last layer {prefix[:-1]!r} does not have one row per class")
    return keys


def transfer_weights(model: nn.Module, checkpoint: Checkpoint, class_names: Sequence[str]) -> Transfer:
    """Load ``checkpoint``'s weights into ``model`` (built for ``class_names``), head rows by name.

    Raises :class:`CheckpointError` when the checkpoint is another architecture or shape.
    """
    spec = checkpoint.spec
    target = model.state_dict()
    source = {name: tensor.to(target[name].dtype) for name, tensor in checkpoint.state_dict.items()}
    head = head_keys(target, len(class_names))
    if set(source) != set(target):
        missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
        raise CheckpointError(
            f"the checkpoint ({spec.arch}) does not fit this network: "
            f"missing {missing[:3]}, extra {extra[:3]}"
        )
    # The head may differ in its number of rows, never in what each row holds.
    wrong = [
        name
        for name in target
        if (source[name].shape[1:] if name in head else source[name].shape)
        != (target[name].shape[1:] if name in head else target[name].shape)
    ]
    if wrong:
        raise CheckpointError(
            f"the checkpoint's {wrong[0]} has shape {tuple(source[wrong[0]].shape)}, "
            f"the network's {tuple(target[wrong[0]].shape)} (other architecture options?)"
        )
    merged = {name: source[name] for name in target if name not in head}
    kept = [name for name in class_names if name in spec.class_names]
    for key in head:
        rows = target[key].clone()
        for name in kept:
            rows[class_names.index(name)] = source[key][spec.class_names.index(name)]
        merged[key] = rows
    model.load_state_dict(merged, strict=True)
    return Transfer(
        kept_classes=tuple(kept),
        new_classes=tuple(name for name in class_names if name not in spec.class_names),
        head=head,
    )


def base_options(
    spec: ModelSpec,
    *,
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    input_size: int | None = None,
) -> dict[str, Any]:
    """The TrainConfig fields that fine-tuning takes from its base model's spec: its architecture and
    options, input size and normalisation. Asking for another is a ``ValueError`` that says why."""
    if model is not None and model != spec.arch:
        raise ValueError(
            f"the base model is a {spec.arch}, not a {model}: fine-tuning keeps its architecture"
        )
    if model_kwargs is not None and dict(model_kwargs) != spec.arch_kwargs:
        raise ValueError(
            f"the base model was built with {spec.arch_kwargs}, not {dict(model_kwargs)}: its weights "
            "only fit its own architecture options"
        )
    if input_size is not None and input_size != spec.input_size:
        raise ValueError(
            f"the base model was trained on {spec.input_size} px photos, not {input_size}: its filters are "
            "tuned to that scale"
        )
    return {
        "model": spec.arch,
        "model_kwargs": dict(spec.arch_kwargs),
        "input_size": spec.input_size,
        "mean": spec.mean,
        "std": spec.std,
    }
