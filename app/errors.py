"""HTTP errors for bad requests, and the checks of options that several routes accept."""

from typing import Any

from fastapi import HTTPException, status

from app.schemas import ErrorPublic
from models.cam import list_cam_methods
from models.cam.overlay import list_colormaps


def unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def too_large(message: str) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, message)


def check_cam_options(method: str, colormap: str) -> None:
    """422 listing the valid values if ``method`` or ``colormap`` is unknown."""
    if method not in list_cam_methods():
        raise unprocessable(f"unknown method {method!r}; valid methods: {', '.join(list_cam_methods())}")
    if colormap not in list_colormaps():
        raise unprocessable(f"unknown colormap {colormap!r}; valid colormaps: {', '.join(list_colormaps())}")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with (``{"detail": "..."}``). Routes
    that read a form list 400: a multipart body that cannot be parsed is answered before validation."""
    return {code: {"model": ErrorPublic} for code in codes}
