"""API keys in the ``X-API-Key`` header, compared in constant time."""

import hmac

from fastapi import HTTPException, status

from core.settings import Settings

API_KEY_HEADER = "X-API-Key"


def check_api_key(settings: Settings, presented: str | None) -> None:
    """Raise 401/403 unless ``presented`` is one of the configured keys."""
    if not settings.api_keys:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "this endpoint needs an API key, and none is configured (TRASHCAM_API_KEYS)",
        )
    if presented is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            f"missing {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    offered = presented.encode()
    # Compare against every key without stopping early, so timing does not reveal which matched.
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(offered, key.get_secret_value().encode())
    if not matched:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"invalid {API_KEY_HEADER}", headers={"WWW-Authenticate": "ApiKey"}
        )
