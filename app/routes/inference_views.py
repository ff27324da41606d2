"""Turning inference outcomes into response bodies."""

from app.schemas import Classification, ClassProbability, ModelRef
from app.serving import Classified
from core.explain import ranked
from models.predictor import Predictor


def model_ref(predictor: Predictor) -> ModelRef:
    return ModelRef(name=predictor.name, version=predictor.version)


def classification(filename: str | None, outcome: Classified) -> Classification:
    predictions = ranked(outcome.predictor.class_names, outcome.probabilities)
    return Classification(
        filename=filename,
        model=model_ref(outcome.predictor),
        label=predictions[0][0],
        predictions=[ClassProbability(label=label, probability=p) for label, p in predictions],
        calibrated=outcome.predictor.calibration.fitted,
        energy=round(outcome.energy, 4),
        unsure=outcome.unsure,
        inference_ms=round(outcome.batch_ms, 3),
        batch_size=outcome.batch_size,
    )
