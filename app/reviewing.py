"""Keeping answered photos for the review queue, as the settings (or the request) ask."""

import io
from typing import Annotated

from fastapi import Form
from PIL import Image

from app.errors import unprocessable
from app.security import check_api_key
from app.serving import Classified
from core.review import REVIEW_POLICIES, SITE_PATTERN, NewItem, ReviewPolicy, ReviewStore
from core.settings import Settings

#: Shorter side (at least) a photo is decoded at when it may be kept: what a person needs to see it.
REVIEW_SIDE = 256
#: Quality of the kept photo: what a person labels from and a fine-tune trains on.
PHOTO_QUALITY = 90

SiteField = Annotated[
    str | None,
    Form(
        description="the site (camera, place) the photo comes from, kept with it in the review queue; "
        "1-64 letters, digits, '.', '_', '-'"
    ),
]
ReviewField = Annotated[
    str | None,
    Form(
        description="keep this request's photos for review: 'unsure' ones, 'all' or 'off' (default: "
        "TRASHCAM_REVIEW); keeping more than that needs a key of the review role",
        json_schema_extra={"enum": list(REVIEW_POLICIES)},
    ),
]


def checked_site(site: str | None) -> str | None:
    if site is None or site == "":
        return None
    if not SITE_PATTERN.fullmatch(site):
        raise unprocessable(f"site {site!r}: 1-64 letters, digits, '.', '_', '-', first a letter or digit")
    return site


def checked_policy(review: str | None, settings: Settings, api_key: str | None) -> ReviewPolicy:
    """The request's review policy (the settings' by default). Keeping more than the settings do stores
    photos on the server for weeks: that needs a key of the review role."""
    if review is None or review == "":
        return settings.review
    for policy in REVIEW_POLICIES:
        if review == policy:
            if REVIEW_POLICIES.index(policy) > REVIEW_POLICIES.index(settings.review):
                check_api_key(settings, api_key, "review")
            return policy
    raise unprocessable(f"review must be one of: {', '.join(REVIEW_POLICIES)}")


def wanted(policy: ReviewPolicy, outcome: Classified) -> bool:
    return policy == "all" or (policy == "unsure" and outcome.unsure)


def keep(
    store: ReviewStore, image: Image.Image, outcome: Classified, site: str | None, filename: str | None
) -> str:
    """Store the photo and what the model said of it; the item's id."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=PHOTO_QUALITY)
    # The model asked (a site's, also where its base answered): what its queue and its labels are for.
    predictor = outcome.routed_from or outcome.predictor
    item = store.add(
        buffer.getvalue(),
        NewItem(
            site=site,
            model=f"{predictor.name}:{predictor.version}",
            model_sha256=predictor.sha256,
            classes=predictor.class_names,
            probabilities=outcome.probabilities,
            energy=outcome.energy,
            distance=outcome.distance,
            unsure=outcome.unsure,
            reasons=outcome.unsure_reasons,
            filename=filename,
        ),
    )
    return item.id
