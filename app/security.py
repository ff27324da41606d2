"""API keys in the ``X-API-Key`` header, compared in constant time, and what each key's role allows."""

import hmac

from fastapi import HTTPException, status

from core.settings import ApiKey, Role, Settings

API_KEY_HEADER = "X-API-Key"


def check_api_key(settings: Settings, presented: str | None, role: Role = "admin") -> ApiKey:
    """The key ``presented``, if it is configured and its role allows ``role``: 401 when it is missing
    or wrong, 403 when no key is configured or its role is below the one needed."""
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
    matched = None
    for key in settings.api_keys:
        if hmac.compare_digest(offered, key.key.get_secret_value().encode()):
            matched = key
    if matched is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"invalid {API_KEY_HEADER}", headers={"WWW-Authenticate": "ApiKey"}
        )
    if not matched.allows(role):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"the key {matched.name!r} has the {matched.role} role; this needs {role}",
        )
    return matched
