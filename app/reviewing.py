"""Keeping answered photos for the review queue, as the settings (or the request) ask."""

import io
import re
from typing import Annotated

from fastapi import Form
from PIL import Image

from app.errors import unprocessable
from app.serving import Classified
from core.review import REVIEW_POLICIES, NewItem, ReviewPolicy, ReviewStore

#: A site tag: what a backend names a camera or a place by.
SITE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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
        "TRASHCAM_REVIEW)",
        json_schema_extra={"enum": list(REVIEW_POLICIES)},
    ),
]


def checked_site(site: str | None) -> str | None:
    if site is None or site == "":
        return None
    if not SITE_PATTERN.fullmatch(site):
        raise unprocessable(f"site {site!r}: 1-64 letters, digits, '.', '_', '-', first a letter or digit")
    return site


def checked_policy(review: str | None, default: ReviewPolicy) -> ReviewPolicy:
    if review is None or review == "":
        return default
    for policy in REVIEW_POLICIES:
        if review == policy:
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
    predictor = outcome.predictor
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
