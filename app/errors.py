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


#: Seconds a client is told to wait while the database cannot be reached (a restart takes a few).
DATABASE_RETRY_AFTER_S = 5


def database_down() -> HTTPException:
    """503 for a request that needs the database while it cannot be reached (down, restarting)."""
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the database cannot be reached now; try again shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def check_cam_options(method: str, colormap: str) -> None:
    """422 listing the valid values if ``method`` or ``colormap`` is unknown."""
    if method not in list_cam_methods():
        raise unprocessable(f"unknown method {method!r}; valid methods: {', '.join(list_cam_methods())}")
    if colormap not in list_colormaps():
        raise unprocessable(f"unknown colormap {colormap!r}; valid colormaps: {', '.join(list_colormaps())}")


#: One realistic answer per error status, for the OpenAPI document (Swagger UI shows them).
ERROR_EXAMPLES: dict[int, str] = {
    400: "There was an error parsing the body",
    401: "missing X-API-Key header",
    403: "this endpoint needs an API key, and none is configured (TRASHCAM_API_KEYS)",
    404: "no model named 'site-b'; known: se_resnet50, site-a",
    409: "se_resnet50:builtin ships with the service and cannot be deleted",
    410: "job 3a718235cf5a4febae8b1c07e6d444e0's result was removed after the retention time",
    413: "request body of 12582912 bytes is over the limit of 11534336 bytes",
    415: "bottle.heic: not an image in a supported format (JPEG, PNG, WEBP, BMP, GIF, TIFF)",
    422: "unknown method 'gradcam3'; valid methods: eigencam, gradcam, gradcampp, hirescam, layercam, "
    "scorecam, xgradcam",
    429: "key 'site-a' has 10 jobs queued or running, the limit is 10 (TRASHCAM_MAX_ACTIVE_JOBS_PER_KEY); "
    "wait for one to finish, or cancel one (DELETE it)",
    503: "no model is loaded: configure TRASHCAM_MODEL_PATH, ship weights with the service, or train one "
    "with POST /train and make it the default",
    507: "photos.zip: the server's disk is full; nothing was kept, try again later",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer with (``{"detail": "..."}``), each with
    an example. Routes that read a form list 400: a multipart body that cannot be parsed is answered
    before validation."""
    return {
        code: {
            "model": ErrorPublic,
            "content": {"application/json": {"example": {"detail": ERROR_EXAMPLES[code]}}},
        }
        for code in codes
    }
