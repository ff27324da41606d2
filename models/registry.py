"""A name -> builder registry, so every network is created the same way and tests can enumerate them."""

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=ModelBuilder)

_MODEL_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(builder: _B) -> _B:
    """Register a keyword-only builder under its function name."""
    name = builder.__name__
    if name in _MODEL_BUILDERS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODEL_BUILDERS)


def create_model(name: str, *, num_classes: int = 6, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with a classifier of ``num_classes`` outputs."""
    try:
        builder = _MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    return builder(num_classes=num_classes, **kwargs)
