import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from app.deps import MetricsDep, ReadAccess, ServiceDep, SettingsDep
from app.errors import error_responses
from app.routes.inference_views import ModelField, chosen_predictor, classification
from app.schemas import ClassifyPublic
from app.uploads import gather_uploads, read_images

router = APIRouter(tags=["inference"], dependencies=[ReadAccess], responses=error_responses(400, 422))


@router.post(
    "/classify", response_model=ClassifyPublic, responses=error_responses(401, 409, 413, 415, 422, 503)
)
async def classify_images(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    file: Annotated[
        UploadFile | None, File(description="one photo (given several times: each is classified)")
    ] = None,
    files: Annotated[list[UploadFile] | None, File(description="several photos")] = None,
    model: ModelField = None,
) -> ClassifyPublic:
    """Which material each photo shows, with the probability of every class."""
    uploads = await gather_uploads(request, settings)
    predictor = await chosen_predictor(service, model)
    # Decoded no larger than the model's input needs.
    images = await read_images(uploads, settings, min_side=predictor.spec.input_size)
    outcomes = await asyncio.gather(*(service.classify(image, predictor=predictor) for image in images))
    return ClassifyPublic(
        results=[
            classification(upload.filename, outcome, metrics)
            for upload, outcome in zip(uploads, outcomes, strict=True)
        ]
    )
