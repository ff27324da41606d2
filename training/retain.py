"""Holding a fine-tuned model to its base on what the site did not upload.

After a fine-tuning run with the base's training photos at hand, its weights are moved along the line
towards the base's (WiSE-FT, Wortsman et al. 2022: a network fine-tuned from another stays in its basin,
and the points between the two trade what the fine-tuning added for what the base knew) until the model
scores within ``forgetting_limit`` of the base on the base's validation photos of the classes the run's
data lacks. Of the points that hold, the one nearest the fine-tuned end is kept. Validation photos
only: neither the test split nor any held-out source chooses anything.
"""

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from models.checkpoint import StateDict
from training.data import Sample
from training.weights import interpolate

#: Points tried between the fine-tuned end (1) and the base (0), nearest the end first.
ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
#: Validation photos per class the check reads (drawn with the run's seed where a class has more).
PHOTOS_PER_CLASS = 100


@dataclass(frozen=True)
class Kept:
    """The chosen point: its weights and the record the run's spec keeps."""

    state: StateDict
    record: dict[str, Any]


def check_samples(
    val_samples: Sequence[Sample], class_names: Sequence[str], lacking: Sequence[str], seed: int
) -> list[Sample]:
    """Up to :data:`PHOTOS_PER_CLASS` of the base's validation photos of each ``lacking`` class."""
    chosen: list[Sample] = []
    for name in lacking:
        of_class = [sample for sample in val_samples if class_names[sample[1]] == name]
        random.Random(f"{seed}/{name}").shuffle(of_class)
        chosen += sorted(of_class[:PHOTOS_PER_CLASS])
    return chosen


def keep_within(
    base: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    accuracy: Callable[[StateDict], float],
    *,
    limit: float,
) -> Kept:
    """The point nearest ``end`` whose ``accuracy`` (on the lacking classes' photos) is at least the
    base's minus ``limit``; the base itself holds by definition."""
    base_state: StateDict = dict(base)
    base_accuracy = accuracy(base_state)
    tried: dict[str, float] = {}
    for alpha in ALPHAS:
        state = interpolate(base, end, alpha)
        score = accuracy(state) if alpha > 0 else base_accuracy
        tried[f"{alpha:.1f}"] = score
        if score >= base_accuracy - limit:
            record = {"alpha": alpha, "accuracy": score, "base_accuracy": base_accuracy, "tried": tried}
            return Kept(state, {**record, "limit": limit})
    raise AssertionError("alpha 0 is the base, which always holds")
