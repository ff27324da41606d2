"""Example-based explanations: a photo's deep-feature hash, and the training photos it resembles."""

import base64
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.deps import ReadAccess, ServiceDep, SettingsDep
from app.errors import error_responses
from app.routes.inference_views import ModelField, chosen_predictor, model_ref
from app.schemas import FingerprintPublic, NeighbourPublic, SimilarPublic
from app.uploads import read_image, refuse_repeated
from models.fingerprint import hash_hex
from models.similarity import NoIndexError

router = APIRouter(tags=["similarity"], dependencies=[ReadAccess], responses=error_responses(400, 422))


@router.post(
    "/fingerprint", response_model=FingerprintPublic, responses=error_responses(401, 409, 413, 415, 503)
)
async def fingerprint_image(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="one photo")],
    model: ModelField = None,
) -> FingerprintPublic:
    """The photo's 64-bit deep-feature perceptual hash under the serving model (the paper's section
    4.2): near-identical photos differ in a few bits."""
    await refuse_repeated(request, "file")
    predictor = await chosen_predictor(service, model)
    photo = await read_image(file, settings, predictor.prepare, min_side=predictor.spec.input_size)
    outcome = await service.fingerprint(photo.inputs, predictor=predictor)
    return FingerprintPublic(
        filename=file.filename,
        model=model_ref(outcome.predictor),
        hash=hash_hex(outcome.hash),
        backend=outcome.backend,
    )


@router.post(
    "/similar", response_model=SimilarPublic, responses=error_responses(401, 404, 409, 413, 415, 503)
)
async def similar_images(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="one photo")],
    k: Annotated[int, Form(ge=1, le=50, description="how many training photos")] = 5,
    by: Annotated[
        Literal["hash", "embedding"],
        Form(description="hash: Hamming distance of the 64-bit hashes; embedding: cosine of the features"),
    ] = "hash",
    model: ModelField = None,
) -> SimilarPublic:
    """The k training photos the serving model sees as most alike, with their labels, distances and
    thumbnails: "the model thinks this is glass; these are the training photos it resembles"."""
    await refuse_repeated(request, "file")
    chosen = await chosen_predictor(service, model)
    photo = await read_image(file, settings, chosen.prepare, min_side=chosen.spec.input_size)
    outcome = await service.fingerprint(photo.inputs, predictor=chosen)
    predictor = outcome.predictor
    try:
        # Read from disk the first time (megabytes): off the event loop.
        index = await run_in_threadpool(lambda: predictor.index)
    except NoIndexError as error:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"{predictor.name}:{predictor.version}: {error}; build one with: trashcam-train index "
            "--checkpoint CHECKPOINT --manifest MANIFEST",
        ) from None
    started = time.perf_counter()
    found = index.by_hash(outcome.hash, k) if by == "hash" else index.by_embedding(outcome.embedding, k)
    search_ms = (time.perf_counter() - started) * 1000
    names = predictor.class_names
    return SimilarPublic(
        filename=file.filename,
        model=model_ref(predictor),
        hash=hash_hex(outcome.hash),
        backend=outcome.backend,
        label=names[max(range(len(names)), key=lambda i: outcome.probabilities[i])],
        unsure=outcome.unsure,
        by=by,
        indexed=len(index),
        search_ms=round(search_ms, 3),
        neighbours=[
            NeighbourPublic(
                rank=rank,
                label=index.class_names[int(index.labels[n.position])],
                distance=round(n.distance, 6),
                path=index.paths[n.position],
                thumbnail=base64.b64encode(index.thumbnails[n.position]).decode(),
            )
            for rank, n in enumerate(found, start=1)
        ],
    )
