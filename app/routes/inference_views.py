"""Turning inference outcomes into response bodies, and the ``model`` field that picks the version."""

from typing import Annotated

from fastapi import Form, HTTPException, status
from starlette.concurrency import run_in_threadpool

from app.errors import unprocessable
from app.metrics import Metrics
from app.schemas import Classification, ClassProbability, ModelRef, UnsureRule
from app.serving import Classified, InferenceService
from core.explain import ranked
from models.checkpoint import CheckpointError
from models.predictor import Predictor
from models.store import ModelNotFoundError

#: The form field of the inference routes that picks another stored version than the serving one.
ModelField = Annotated[
    str | None,
    Form(
        description="a stored version (name:version, or name for its newest; the shipped model is "
        "NAME:builtin) to answer with instead of the serving model: one service can serve several "
        "sites' models, or compare two",
        examples=["se_resnet50:builtin"],
    ),
]


async def chosen_predictor(service: InferenceService, model: str | None) -> Predictor:
    """The predictor a request asked for: a stored version (422 when there is none such, 409 when its
    checkpoint cannot be served), else the serving model."""
    if not model:
        return service.manager.predictor
    try:
        return await run_in_threadpool(service.manager.stored_predictor, model)
    except ModelNotFoundError as error:
        raise unprocessable(f"model: {error}") from None
    except CheckpointError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, f"model {model} cannot be served: {error}") from None


def model_ref(predictor: Predictor) -> ModelRef:
    return ModelRef(name=predictor.name, version=predictor.version)


def unsure_rule(predictor: Predictor) -> UnsureRule:
    calibration = predictor.calibration
    return UnsureRule(
        min_probability=calibration.min_probability,
        max_energy=calibration.max_energy,
        # A threshold without a bank to measure against decides nothing.
        max_distance=calibration.max_distance if predictor.feature_bank is not None else None,
        target_accuracy=calibration.target_accuracy,
    )


def classification(
    filename: str | None, outcome: Classified, metrics: Metrics | None = None
) -> Classification:
    """The answer for one photo, counted in ``metrics`` (by class, unsure reason and energy) when given."""
    predictions = ranked(outcome.predictor.class_names, outcome.probabilities)
    if metrics is not None:
        metrics.observe_answer(predictions[0][0], outcome.unsure_reasons, outcome.energy, outcome.distance)
    return Classification(
        filename=filename,
        model=model_ref(outcome.predictor),
        routed_from=None if outcome.routed_from is None else model_ref(outcome.routed_from),
        label=predictions[0][0],
        predictions=[ClassProbability(label=label, probability=p) for label, p in predictions],
        calibrated=outcome.predictor.calibration.fitted,
        energy=round(outcome.energy, 4),
        distance=None if outcome.distance is None else round(outcome.distance, 4),
        unsure=outcome.unsure,
        unsure_reasons=outcome.unsure_reasons,
        rule=unsure_rule(outcome.predictor),
        inference_ms=round(outcome.batch_ms, 3),
        batch_size=outcome.batch_size,
        backend=outcome.backend,
    )
