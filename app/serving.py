"""Batched inference around the serving model (see :class:`core.model_manager.ModelManager`).

:class:`InferenceService` prepares each photo in the request's thread and feeds the prepared inputs
through micro-batchers that share the inference lanes (:mod:`app.lanes`); a lane only stacks what its
batch's requests prepared (uint8 pixels), normalises the batch and runs the model, on a replica of its
own.
"""

import functools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, fields
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.batching import MicroBatcher
from app.lanes import InferenceLanes, LanePlan
from core.model_manager import ModelManager
from models.cam import PER_CHANNEL_METHODS
from models.predictor import Predictor, Scores

#: Methods that hold a lane about a minute a photo on 2 CPU cores.
EXPENSIVE_METHODS = PER_CHANNEL_METHODS
#: When a refused expensive explanation may be tried again (seconds): about what one takes on a CPU.
EXPENSIVE_RETRY_AFTER_S = 60


class ExpensiveBusyError(RuntimeError):
    """Every slot for expensive explanations is taken (503, try again later)."""


class ExpensiveRefusedError(RuntimeError):
    """This service runs no expensive explanation in a request: one inference lane, which it would hold."""


def expensive_slots(plan: LanePlan, device_type: str, limit: int) -> int:
    """How many expensive explanations may run at once: ``limit``, and on a CPU at most the lanes less
    one, so that classifying never waits a minute behind one."""
    return limit if device_type == "cuda" else min(limit, plan.lanes - 1)


@dataclass(frozen=True)
class Classified:
    #: The model that answered: the one asked, or the base it routed the photo to.
    predictor: Predictor
    probabilities: list[float]
    energy: float
    distance: float | None
    batch_ms: float
    batch_size: int
    #: What ran the forward pass: "openvino" or "torch".
    backend: str
    #: The model asked, when it routed the photo to its base (which answered).
    routed_from: Predictor | None = field(default=None, kw_only=True)

    @property
    def unsure(self) -> bool:
        return self.predictor.is_unsure(self.probabilities, self.energy, self.distance)

    @property
    def unsure_reasons(self) -> list[str]:
        return self.predictor.unsure_reasons(self.probabilities, self.energy, self.distance)


@dataclass(frozen=True)
class Explained(Classified):
    heatmap: npt.NDArray[np.float32]
    target: int


@dataclass(frozen=True)
class Fingerprinted(Classified):
    embedding: npt.NDArray[np.float32]
    hash: int


def _who(
    predictor: Predictor, replica: Predictor, answered_by: Predictor
) -> tuple[Predictor, Predictor | None]:
    """Which model answered a photo that ``predictor`` was asked about and its lane's ``replica`` ran, and
    the one asked where they differ (a lane's replicas stand for the predictors they copy)."""
    # Down the chain of bases (a site model fine-tuned from another may route twice), side by side.
    original: Predictor | None = predictor
    copy: Predictor | None = replica
    while original is not None and copy is not None:
        if answered_by is copy:
            return original, None if original is predictor else predictor
        original, copy = original.base, copy.base
    return answered_by, predictor


def _answers(predictor: Predictor, replica: Predictor, scores: Scores, batch_ms: float) -> list[Classified]:
    """Each photo's answer in a batch that ``predictor``'s lane ``replica`` ran, by the model that gave it."""
    answers, size = [], len(scores.energies)
    for row, energy, distance, answered_by, backend in zip(
        scores.probabilities,
        scores.energies,
        scores.distance_list(),
        scores.answered_by,
        scores.backends,
        strict=True,
    ):
        answerer, asked = _who(predictor, replica, answered_by)
        answers.append(
            Classified(
                answerer, row.tolist(), float(energy), distance, batch_ms, size, backend, routed_from=asked
            )
        )
    return answers


def _fields(answer: Classified) -> dict[str, Any]:
    """An answer's fields, for the richer answer of the same photo (not copied: ``asdict`` would)."""
    return {field.name: getattr(answer, field.name) for field in fields(answer)}


@dataclass(frozen=True)
class Prepared:
    """A photo prepared (off the inference thread) as the input of the model it will run on."""

    inputs: Tensor
    predictor: Predictor


@dataclass(frozen=True)
class ExplainItem(Prepared):
    target: int | None


# Items share a batch only with items for the same loaded model: (kind, the predictor's identity), and
# for explanations the method and layer too. Not its weights' digest: a recalibrated model keeps its
# weights, and one loaded again may differ in spec, so only the object itself says "the same model".
BatchKey = tuple[str, int, str, str]


class InferenceService:
    """Classify and explain through micro-batchers that share the inference lanes."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_pending: int = 256,
        lanes: LanePlan | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        max_expensive: int = 1,
    ) -> None:
        self.manager = manager
        self.lanes = InferenceLanes(lanes or LanePlan(lanes=1, threads=torch.get_num_threads()))
        #: How many expensive explanations (:data:`EXPENSIVE_METHODS`) may run at once, and how many do.
        self.expensive_slots = expensive_slots(self.lanes.plan, manager.device.type, max_expensive)
        self.expensive_running = 0
        # Every batcher takes its lanes from one set, so the lanes bound how many batches run at once.
        batching = functools.partial(
            MicroBatcher,
            max_size=max_batch_size,
            max_wait=max_wait_s,
            lanes=self.lanes,
            max_pending=max_pending,
            on_batch=on_batch,
        )
        self._classifier: MicroBatcher[Prepared, Classified] = batching(self._classify_batch)
        self._explainer: MicroBatcher[ExplainItem, Explained] = batching(self._explain_batch)
        self._fingerprinter: MicroBatcher[Prepared, Fingerprinted] = batching(self._fingerprint_batch)

    def start(self) -> None:
        self._classifier.start()
        self._explainer.start()
        self._fingerprinter.start()

    async def stop(self) -> None:
        await self._classifier.stop()
        await self._explainer.stop()
        await self._fingerprinter.stop()
        self.lanes.shutdown()

    def _classify_batch(self, lane: int, key: Hashable, items: list[Prepared]) -> list[Classified]:
        predictor = items[0].predictor
        replica = predictor.replica(lane)
        started = time.perf_counter()
        scores = replica.classify(torch.stack([item.inputs for item in items]))
        return _answers(predictor, replica, scores, (time.perf_counter() - started) * 1000)

    def _explain_batch(self, lane: int, key: Hashable, items: list[ExplainItem]) -> list[Explained]:
        _, _, method, layer = cast(BatchKey, key)
        predictor = items[0].predictor
        replica = predictor.replica(lane)
        started = time.perf_counter()
        result = replica.explain(
            torch.stack([item.inputs for item in items]),
            method=method,
            targets=[item.target for item in items],
            layer=layer or None,
        )
        answers = _answers(predictor, replica, result, (time.perf_counter() - started) * 1000)
        return [
            Explained(**_fields(answer), heatmap=heatmap.numpy(), target=int(target))
            for answer, heatmap, target in zip(answers, result.heatmaps, result.targets, strict=True)
        ]

    def _fingerprint_batch(self, lane: int, key: Hashable, items: list[Prepared]) -> list[Fingerprinted]:
        predictor = items[0].predictor
        replica = predictor.replica(lane)
        started = time.perf_counter()
        result = replica.fingerprint(torch.stack([item.inputs for item in items]))
        answers = _answers(predictor, replica, result, (time.perf_counter() - started) * 1000)
        return [
            Fingerprinted(**_fields(answer), embedding=embedding.numpy(), hash=value)
            for answer, embedding, value in zip(answers, result.embeddings, result.hashes, strict=True)
        ]

    def input_size(self) -> int:
        """The side of the serving model's input: what a photo to classify needs at least."""
        return self.manager.predictor.spec.input_size

    async def _prepare(self, image: Image.Image | Tensor, predictor: Predictor | None) -> Prepared:
        """``image`` as ``predictor``'s input (the serving one's when None); a tensor is an input that
        the request prepared for that predictor already, off the event loop with its decoding."""
        # The model is chosen when the request arrives, and the request finishes on it even if another
        # begins serving meanwhile: its input was prepared for this one's size and normalisation.
        if isinstance(image, Tensor):
            if predictor is None:
                raise TypeError("a prepared input needs the predictor it was prepared for")
            return Prepared(image, predictor)
        chosen = predictor or self.manager.predictor
        return Prepared(await run_in_threadpool(chosen.prepare, image), chosen)

    async def fingerprint(
        self, image: Image.Image | Tensor, *, predictor: Predictor | None = None
    ) -> Fingerprinted:
        prepared = await self._prepare(image, predictor)
        return await self._fingerprinter.submit(("fingerprint", id(prepared.predictor), "", ""), prepared)

    async def classify(
        self, image: Image.Image | Tensor, *, predictor: Predictor | None = None
    ) -> Classified:
        """Classify with the serving model, or with ``predictor`` (another loaded version): a photo, or
        its input prepared by ``predictor.prepare``."""
        prepared = await self._prepare(image, predictor)
        return await self._classifier.submit(("classify", id(prepared.predictor), "", ""), prepared)

    async def explain(
        self,
        image: Image.Image | Tensor,
        *,
        method: str,
        target: int | None,
        layer: str | None,
        predictor: Predictor | None = None,
    ) -> Explained:
        """Explain with the serving model, or with ``predictor`` (another loaded version). An expensive
        method takes one of its few slots for the whole explanation, or is refused at once."""
        if method not in EXPENSIVE_METHODS:
            return await self._explain(image, method, target, layer, predictor)
        if self.expensive_slots == 0:
            raise ExpensiveRefusedError(
                f"{method} runs a forward pass per channel and would hold this service's only inference "
                "lane for a minute a photo: use POST /explain/batch"
            )
        if self.expensive_running >= self.expensive_slots:
            raise ExpensiveBusyError(
                f"{method}: {self.expensive_running} explanation(s) of a forward pass per channel already "
                f"running, the most at once; try again later, or use POST /explain/batch"
            )
        self.expensive_running += 1
        try:
            return await self._explain(image, method, target, layer, predictor)
        finally:
            self.expensive_running -= 1

    async def _explain(
        self,
        image: Image.Image | Tensor,
        method: str,
        target: int | None,
        layer: str | None,
        predictor: Predictor | None,
    ) -> Explained:
        prepared = await self._prepare(image, predictor)
        key: BatchKey = ("explain", id(prepared.predictor), method, layer or "")
        return await self._explainer.submit(key, ExplainItem(prepared.inputs, prepared.predictor, target))
