"""What an explanation shows, made one way for ``POST /explain`` and for heatmap batches: the classes
ranked by probability, and the heatmap rendered over the photo and on its own at the photo's size."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.cam.overlay import encode_png, heatmap_to_uint8, overlay_heatmap, resize_heatmap
from models.predictor import Predictor


def ranked(class_names: Sequence[str], probabilities: Sequence[float]) -> list[tuple[str, float]]:
    """(class, probability) for every class, most probable first."""
    return sorted(zip(class_names, probabilities, strict=True), key=lambda pair: pair[1], reverse=True)


@dataclass(frozen=True)
class Explanation:
    predictions: list[tuple[str, float]]  # most probable first
    target: int  # the class the heatmap explains
    target_label: str
    calibrated: bool
    energy: float
    distance: float | None
    unsure: bool
    unsure_reasons: list[str]
    overlay_png: bytes
    heatmap_png: bytes

    @property
    def label(self) -> str:
        return self.predictions[0][0]


def explanation(
    predictor: Predictor,
    photo: Image.Image,
    *,
    probabilities: Sequence[float],
    energy: float,
    distance: float | None,
    heatmap: npt.NDArray[np.float32],
    target: int,
    colormap: str,
    alpha: float,
) -> Explanation:
    """The outcome of one photo of ``predictor.explain``, with its overlay and heatmap as PNGs."""
    pixels = np.asarray(photo.convert("RGB"))
    sized = resize_heatmap(heatmap, pixels.shape[:2])
    return Explanation(
        predictions=ranked(predictor.class_names, probabilities),
        target=target,
        target_label=predictor.class_names[target],
        calibrated=predictor.calibration.fitted,
        energy=energy,
        distance=distance,
        unsure=predictor.is_unsure(probabilities, energy, distance),
        unsure_reasons=predictor.unsure_reasons(probabilities, energy, distance),
        overlay_png=encode_png(overlay_heatmap(pixels, sized, colormap=colormap, alpha=alpha)),
        heatmap_png=encode_png(heatmap_to_uint8(sized)),
    )
