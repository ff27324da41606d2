"""Name -> CAM method registry, so the API and the tests can enumerate the methods."""

from collections.abc import Callable
from typing import TypeVar

from models.cam.base import BaseCAM

_C = TypeVar("_C", bound=type[BaseCAM])

_CAM_METHODS: dict[str, type[BaseCAM]] = {}


def register_cam(name: str) -> Callable[[_C], _C]:
    """Class decorator registering a CAM method under ``name``."""

    def register(cls: _C) -> _C:
        if name in _CAM_METHODS:
            raise ValueError(f"CAM method {name!r} is already registered")
        _CAM_METHODS[name] = cls
        return cls

    return register


def list_cam_methods() -> list[str]:
    """Names of every registered CAM method, sorted."""
    return sorted(_CAM_METHODS)


def get_cam_method(name: str) -> type[BaseCAM]:
    """The CAM class registered as ``name``; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return _CAM_METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown CAM method {name!r}; known methods: {', '.join(list_cam_methods())}"
        ) from None
