"""The review queue over HTTP: list what waits for a person, show one photo with the model's guess and
heatmap, record a person's label. What people label trains the site's model (``POST /train`` with
``data_path=review:SITE``)."""

import base64
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Form, HTTPException, Query, status
from fastapi.responses import Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.deps import ReviewAccess, ReviewerDep, ReviewStoreDep, ServiceDep
from app.errors import error_responses, unprocessable
from app.schemas import ReviewItemPublic, ReviewLabelPublic, ReviewPage
from core.explain import explanation
from core.review import (
    AlreadyLabelledError,
    ReviewError,
    ReviewItem,
    ReviewItemNotFoundError,
    ReviewState,
    ReviewStore,
)
from models.calibration import UNSURE_REASONS
from models.checkpoint import CheckpointError
from models.predictor import Predictor
from models.store import ModelNotFoundError

# Every route needs a key of the review role: the queue holds photos of the public, and who labelled them.
router = APIRouter(
    prefix="/review",
    tags=["review"],
    dependencies=[ReviewAccess],
    responses=error_responses(401, 403, 422),
)
#: Longest side of the thumbnail in an item's answer.
THUMBNAIL_SIDE = 256


def item_public(item: ReviewItem) -> ReviewItemPublic:
    return ReviewItemPublic(
        id=item.id,
        created_at=item.created,
        site=item.site,
        model=item.model,
        filename=item.filename,
        predicted=item.predicted,
        confidence=item.confidence,
        probabilities=item.probabilities,
        energy=item.energy,
        distance=item.distance,
        unsure=item.unsure,
        unsure_reasons=list(item.reasons),
        classes=list(item.classes),
        label=item.label,
        labels=[ReviewLabelPublic(label=lab.label, by=lab.by, at=lab.at) for lab in item.labels],
    )


def find_item(store: ReviewStore, item_id: str) -> ReviewItem:
    try:
        return store.get(item_id)
    except ReviewItemNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None


@router.get("", response_model=ReviewPage)
def read_review_items(
    store: ReviewStoreDep,
    state: Annotated[
        ReviewState,
        Query(description="items nobody labelled, those skipped for later, those labelled, or all"),
    ] = "pending",
    site: Annotated[str | None, Query(description="only this site's photos")] = None,
    reason: Annotated[
        str | None,
        Query(
            description="only photos unsure for this reason", json_schema_extra={"enum": list(UNSURE_REASONS)}
        ),
    ] = None,
    model: Annotated[str | None, Query(description="only the answers of this model (name:version)")] = None,
    order: Annotated[
        Literal["oldest", "least_sure"], Query(description="oldest first, or the least sure first")
    ] = "oldest",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> ReviewPage:
    """The photos waiting for a person (or those labelled), one page at a time."""
    if reason is not None and reason not in UNSURE_REASONS:
        raise unprocessable(f"reason must be one of: {', '.join(UNSURE_REASONS)}")
    items, total = store.find(
        state=state, site=site, reason=reason, model=model, order=order, limit=limit, offset=offset
    )
    return ReviewPage(items=[item_public(i) for i in items], total=total, limit=limit, offset=offset)


def thumbnail_jpeg(photo: bytes) -> bytes:
    with Image.open(io.BytesIO(photo)) as image:
        small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def model_of(item: ReviewItem, service: ServiceDep) -> Predictor | None:
    """The model that answered, if it can still be loaded (None: deleted since)."""
    serving = service.manager.predictor
    if f"{serving.name}:{serving.version}" == item.model:
        predictor = serving
    else:
        try:
            predictor = service.manager.stored_predictor(item.model)
        except (ModelNotFoundError, CheckpointError, ValueError):
            return None
    # A version deleted and its name given again holds other weights: they did not answer.
    return predictor if predictor.sha256 == item.model_sha256 else None


@router.get(
    "/{item_id}",
    response_model=ReviewItemPublic,
    responses=error_responses(404),
)
async def read_review_item(
    item_id: str,
    store: ReviewStoreDep,
    service: ServiceDep,
    heatmap: Annotated[bool, Query(description="explain the guess with a Grad-CAM overlay")] = True,
) -> ReviewItemPublic:
    """One photo with what the model said, its thumbnail and (with ``heatmap``) the Grad-CAM overlay of
    its guess from the model that answered, when that model is still stored."""
    item = find_item(store, item_id)
    photo = await run_in_threadpool(store.photo_path(item.id).read_bytes)
    public = item_public(item)
    public.thumbnail = base64.b64encode(await run_in_threadpool(thumbnail_jpeg, photo)).decode("ascii")
    predictor = await run_in_threadpool(model_of, item, service) if heatmap else None
    if predictor is not None:
        image = Image.open(io.BytesIO(photo)).convert("RGB")
        outcome = await service.explain(image, method="gradcam", target=None, layer=None, predictor=predictor)
        shown = await run_in_threadpool(
            explanation,
            predictor,
            image,
            probabilities=outcome.probabilities,
            energy=outcome.energy,
            distance=outcome.distance,
            heatmap=outcome.heatmap,
            target=outcome.target,
            colormap="jet",
            alpha=0.5,
        )
        public.heatmap = base64.b64encode(shown.overlay_png).decode("ascii")
    return public


@router.get(
    "/{item_id}/photo",
    responses={**error_responses(404), 200: {"content": {"image/jpeg": {}}}},
    response_class=Response,
)
def read_review_photo(item_id: str, store: ReviewStoreDep) -> Response:
    """The photo as it was classified (JPEG)."""
    item = find_item(store, item_id)
    return Response(store.photo_path(item.id).read_bytes(), media_type="image/jpeg")


@router.post(
    "/{item_id}",
    response_model=ReviewItemPublic,
    responses=error_responses(404, 409),
)
def label_review_item(
    item_id: str,
    store: ReviewStoreDep,
    reviewer: ReviewerDep,
    label: Annotated[
        str, Form(description="a class of the model that answered, 'skip' (look later) or 'not waste'")
    ],
    relabel: Annotated[
        bool, Form(description="record this label beside an earlier one (the latest counts)")
    ] = False,
) -> ReviewItemPublic:
    """Record a person's label for a photo, and who gave it (the key's name). An item that has a label
    takes another only with ``relabel``: 409 otherwise; the first stays on record."""
    try:
        item = store.label(item_id, label, by=reviewer.name, relabel=relabel)
    except ReviewItemNotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except AlreadyLabelledError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None
    except ReviewError as error:
        raise unprocessable(str(error)) from None
    return item_public(item)
