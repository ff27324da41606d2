import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Request, UploadFile
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from app.deps import ApiKeyHeader, ReadAccess, ServingDep
from app.errors import error_responses
from app.forms import form_of, multipart_body
from app.reviewing import (
    REVIEW_SIDE,
    ReviewField,
    SiteField,
    checked_policy,
    checked_site,
    keep,
    wanted,
)
from app.routes.inference_views import ModelField, chosen_predictor, classification
from app.schemas import ClassifyPublic
from app.uploads import gather_uploads, read_images, refuse_repeated

router = APIRouter(tags=["inference"], dependencies=[ReadAccess], responses=error_responses(400, 422))


# The form of POST /classify, read by app.forms.form_of: the busiest route. (No docstring: it would
# become the schema's description in the API document.)
class ClassifyForm(BaseModel):
    model_config = ConfigDict(title="Body_classify")

    file: Annotated[
        UploadFile | None, File(description="one photo (given several times: each is classified)")
    ] = None
    files: Annotated[list[UploadFile] | None, File(description="several photos")] = None
    model: ModelField = None
    site: SiteField = None
    review: ReviewField = None


@router.post(
    "/classify",
    response_model=ClassifyPublic,
    responses=error_responses(401, 403, 409, 413, 415, 422, 503),
    openapi_extra=multipart_body(ClassifyForm),
)
async def classify_images(
    request: Request,
    # First: the body is read before anything else is looked up, as FastAPI reads its own forms.
    form: Annotated[ClassifyForm, Depends(form_of(ClassifyForm))],
    serving: ServingDep,
    api_key: ApiKeyHeader = None,
) -> ClassifyPublic:
    """Which material each photo shows, with the probability of every class. Photos the review policy
    asks for (unsure ones, or all) are kept for a person to label (``review_id``)."""
    service, settings, metrics = serving.service, serving.settings, serving.metrics
    await refuse_repeated(request, "site", "review")
    site, policy = checked_site(form.site), checked_policy(form.review, settings, api_key)
    model = form.model
    uploads = await gather_uploads(request, settings)
    predictor = await chosen_predictor(service, model)
    # Decoded no larger than the model's input needs, or a person labelling it.
    min_side = predictor.spec.input_size if policy == "off" else max(predictor.spec.input_size, REVIEW_SIDE)
    photos = await read_images(uploads, settings, predictor.prepare, min_side=min_side)
    outcomes = await asyncio.gather(
        *(service.classify(photo.inputs, predictor=predictor) for photo in photos)
    )
    results = []
    for upload, photo, outcome in zip(uploads, photos, outcomes, strict=True):
        result = classification(upload.filename, outcome, metrics)
        if wanted(policy, outcome):
            result.review_id = await run_in_threadpool(
                keep, serving.review_store, photo.image, outcome, site, upload.filename
            )
        results.append(result)
    return ClassifyPublic(results=results)
