"""A name -> builder registry, so every network is created the same way and tests can enumerate them.

Each builder declares the options it takes as a pydantic model with bounds, so options from a
request or a command line are checked (and refused with why) before any network is built.
"""

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

ModelBuilder = Callable[..., nn.Module]
_B = TypeVar("_B", bound=ModelBuilder)


class ModelOptions(BaseModel):
    """A builder's options; unknown ones are refused. The base class is a builder that takes none."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


_MODEL_BUILDERS: dict[str, ModelBuilder] = {}
_MODEL_OPTIONS: dict[str, type[ModelOptions]] = {}


@overload
def register_model(builder: _B, /) -> _B: ...
@overload
def register_model(*, options: type[ModelOptions]) -> Callable[[_B], _B]: ...
def register_model(
    builder: _B | None = None, /, *, options: type[ModelOptions] = ModelOptions
) -> _B | Callable[[_B], _B]:
    """Register a keyword-only builder under its function name, with the options it takes."""

    def register(function: _B) -> _B:
        name = function.__name__
        if name in _MODEL_BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _MODEL_BUILDERS[name] = function
        _MODEL_OPTIONS[name] = options
        return function

    return register if builder is None else register(builder)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODEL_BUILDERS)


def validate_model_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given for model ``name``, checked against its declared ones (without building it);
    ``ValueError`` says which option is wrong and why."""
    if name not in _MODEL_OPTIONS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    try:
        checked = _MODEL_OPTIONS[name].model_validate(dict(options))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'options'}: {item['msg']}"
            for item in error.errors()
        )
        raise ValueError(f"invalid options for {name}: {problems}") from None
    return checked.model_dump(exclude_unset=True)


def create_model(name: str, *, num_classes: int = 6, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with a classifier of ``num_classes`` outputs."""
    options = validate_model_options(name, kwargs)
    return _MODEL_BUILDERS[name](num_classes=num_classes, **options)
