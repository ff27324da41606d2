"""The serving model and the batched inference around it.

:class:`ModelManager` decides which checkpoint serves (explicit path, else the store's default, else
the shipped weights), in which precision, and swaps predictors atomically: a request takes the current
predictor when it arrives and finishes on it. :class:`InferenceService` prepares each photo in the
request's thread and feeds the prepared inputs through micro-batchers that share one inference thread,
which then only stacks them and runs the model.
"""

import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.batching import MicroBatcher
from models.calibration import Thresholds
from models.checkpoint import CheckpointError
from models.precision import InferencePrecision, choose_precision
from models.predictor import Predictor, select_device
from models.store import ModelStore, ModelVersion

logger = logging.getLogger(__name__)


#: How many stored versions besides the serving one stay loaded for comparisons.
OTHER_MODELS_KEPT = 2


class NoModelError(RuntimeError):
    """No model is configured, stored or shipped."""


class ModelManager:
    def __init__(
        self,
        *,
        store: ModelStore,
        explicit_path: Path | None,
        shipped_path: Path,
        device_name: str,
        thresholds: Thresholds | None = None,
        precision: str = "auto",
        channels_last: bool = True,
    ) -> None:
        self.store = store
        self.explicit_path = explicit_path
        self.shipped_path = shipped_path
        self.device = select_device(device_name)
        #: How every model it loads infers on its device (``models.precision.choose_precision``).
        self.precision: InferencePrecision = choose_precision(
            self.device, precision, channels_last=channels_last
        )
        #: "Unsure" thresholds from the settings, over every model's own.
        self.thresholds = thresholds or Thresholds()
        self._predictor: Predictor | None = None
        self._seen_default: str | None = None
        #: Stored versions loaded to compare with the serving one, oldest first.
        self._others: dict[str, Predictor] = {}
        #: The checkpoints that could not be loaded at start-up, for /ready.
        self.load_errors: list[str] = []
        # Loading and swapping happen under one lock, so a slow refresh cannot land after a switch.
        self._swap = threading.Lock()

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            raise NoModelError(
                "no model is loaded: configure TRASHCAM_MODEL_PATH, ship weights with the service, "
                "or train one with POST /train and make it the default"
            )
        return self._predictor

    @property
    def loaded(self) -> bool:
        return self._predictor is not None

    def load_initial(self) -> None:
        """Serve the explicit checkpoint, else the store's default, else the shipped weights.

        The explicit checkpoint is what serves at start-up; a default set later (by PUT /models/default
        or a training job asked to make its model the default) takes over from it. A checkpoint that
        cannot be loaded (corrupt, truncated, altered) is skipped for the next one, the default's
        earlier versions first, so one bad file never keeps the service from starting; ``load_errors``
        says what was skipped.
        """
        default = self.store.default()
        self._seen_default = default.ref if default is not None else None
        self.load_errors = []
        for described, load in self._candidates(default):
            try:
                self._predictor = load()
            except CheckpointError as error:
                logger.error("cannot serve %s: %s", described, error)
                self.load_errors.append(f"{described} cannot be loaded (corrupt, truncated or altered)")
                continue
            logger.info("serving model %s:%s", self._predictor.name, self._predictor.version)
            return

    def _candidates(self, default: ModelVersion | None) -> list[tuple[str, Callable[[], Predictor]]]:
        candidates: list[tuple[str, Callable[[], Predictor]]] = []
        if self.explicit_path is not None:
            path = self.explicit_path
            candidates.append(("the configured model", lambda: self._from_file(path)))
        if default is not None:
            earlier = [v for v in self.store.versions(default.name) if v.version != default.version]
            for version in [default, *reversed(earlier)]:
                candidates.append((f"model {version.ref}", functools.partial(self._from_version, version)))
        if self.shipped_path.is_file():
            candidates.append(("the shipped model", lambda: self._from_file(self.shipped_path)))
        return candidates

    def refresh(self) -> bool:
        """Follow the store's default when something else (a finished training job) changed it.

        Returns True if a new predictor was swapped in.
        """
        with self._swap:
            default = self.store.default()
            ref = default.ref if default is not None else None
            if ref == self._seen_default or default is None:
                self._seen_default = ref
                return False
            predictor = self._from_version(default)
            self._predictor, self._seen_default = predictor, ref
        logger.info("serving model %s (new default)", ref)
        return True

    def switch(self, name: str, version: str | None) -> ModelVersion:
        """Make a stored version the default and serve it; it is loaded before the swap."""
        with self._swap:
            chosen = self.store.get(name, version)
            predictor = self._from_version(chosen)
            self.store.set_default(chosen.name, chosen.version)
            self._predictor, self._seen_default = predictor, chosen.ref
        return chosen

    def stored_predictor(self, ref: str) -> Predictor:
        """A stored version (``name:version``, or ``name`` for its newest now), for comparisons: the
        serving predictor when it is that version, else one of the last few loaded. Loads from disk:
        call it off the event loop. ``ModelNotFoundError`` if there is no such version."""
        name, _, version = ref.partition(":")
        chosen = self.store.get(name, version or None)
        with self._swap:
            serving = self._predictor
            if serving is not None and (serving.name, serving.version) == (chosen.name, chosen.version):
                return serving
            cached = self._others.get(chosen.ref)
            if cached is None or cached.sha256 != chosen.sha256:
                cached = self._others[chosen.ref] = self._from_version(chosen)
                while len(self._others) > OTHER_MODELS_KEPT:
                    self._others.pop(next(iter(self._others)))
            return cached

    def _from_file(self, path: Path) -> Predictor:
        # A file outside the store is versioned by its weights' digest.
        name = path.parent.name if path.name == "model.pt" else path.stem
        return Predictor.from_checkpoint(
            str(path),
            name=name,
            version=None,
            device=self.device,
            thresholds=self.thresholds,
            precision=self.precision,
        )

    def _from_version(self, version: ModelVersion) -> Predictor:
        predictor = Predictor.from_checkpoint(
            str(version.path),
            name=version.name,
            version=version.version,
            device=self.device,
            thresholds=self.thresholds,
            precision=self.precision,
        )
        # The file's own digest only proves it is intact; the store's record proves it is the version
        # that was registered (and that /models shows), not weights swapped in with a new digest.
        if predictor.sha256 != version.sha256:
            raise CheckpointError(
                f"{version.ref}: weights {predictor.sha256[:12]} are not the registered {version.sha256[:12]}"
            )
        return predictor


@dataclass(frozen=True)
class Classified:
    predictor: Predictor
    probabilities: list[float]
    energy: float
    batch_ms: float
    batch_size: int

    @property
    def unsure(self) -> bool:
        return self.predictor.is_unsure(self.probabilities, self.energy)


@dataclass(frozen=True)
class Explained(Classified):
    heatmap: npt.NDArray[np.float32]
    target: int


@dataclass(frozen=True)
class Fingerprinted(Classified):
    embedding: npt.NDArray[np.float32]
    hash: int


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
    """Classify and explain through micro-batchers that share one inference thread."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_pending: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.manager = manager
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        # Both batchers share the one inference thread, so the model never runs twice at once.
        batching = functools.partial(
            MicroBatcher,
            max_size=max_batch_size,
            max_wait=max_wait_s,
            executor=self.executor,
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
        self.executor.shutdown(wait=True)

    def _classify_batch(self, key: Hashable, items: list[Prepared]) -> list[Classified]:
        predictor = items[0].predictor
        started = time.perf_counter()
        scores = predictor.classify(torch.stack([item.inputs for item in items]))
        elapsed = (time.perf_counter() - started) * 1000
        return [
            Classified(predictor, row.tolist(), float(energy), elapsed, len(items))
            for row, energy in zip(scores.probabilities, scores.energies, strict=True)
        ]

    def _explain_batch(self, key: Hashable, items: list[ExplainItem]) -> list[Explained]:
        _, _, method, layer = cast(BatchKey, key)
        predictor = items[0].predictor
        started = time.perf_counter()
        result = predictor.explain(
            torch.stack([item.inputs for item in items]),
            method=method,
            targets=[item.target for item in items],
            layer=layer or None,
        )
        elapsed = (time.perf_counter() - started) * 1000
        return [
            Explained(
                predictor, row.tolist(), float(energy), elapsed, len(items), heatmap.numpy(), int(target)
            )
            for row, energy, heatmap, target in zip(
                result.probabilities, result.energies, result.heatmaps, result.targets, strict=True
            )
        ]

    def _fingerprint_batch(self, key: Hashable, items: list[Prepared]) -> list[Fingerprinted]:
        predictor = items[0].predictor
        started = time.perf_counter()
        result = predictor.fingerprint(torch.stack([item.inputs for item in items]))
        elapsed = (time.perf_counter() - started) * 1000
        return [
            Fingerprinted(
                predictor, row.tolist(), float(energy), elapsed, len(items), embedding.numpy(), value
            )
            for row, energy, embedding, value in zip(
                result.probabilities, result.energies, result.embeddings, result.hashes, strict=True
            )
        ]

    def input_size(self) -> int:
        """The side of the serving model's input: what a photo to classify needs at least."""
        return self.manager.predictor.spec.input_size

    async def _prepare(self, image: Image.Image, predictor: Predictor | None) -> Prepared:
        # The model is chosen when the request arrives, and the request finishes on it even if another
        # begins serving meanwhile: its input was prepared for this one's size and normalisation.
        chosen = predictor or self.manager.predictor
        return Prepared(await run_in_threadpool(chosen.prepare, image), chosen)

    async def fingerprint(self, image: Image.Image) -> Fingerprinted:
        prepared = await self._prepare(image, None)
        return await self._fingerprinter.submit(("fingerprint", id(prepared.predictor), "", ""), prepared)

    async def classify(self, image: Image.Image) -> Classified:
        prepared = await self._prepare(image, None)
        return await self._classifier.submit(("classify", id(prepared.predictor), "", ""), prepared)

    async def explain(
        self,
        image: Image.Image,
        *,
        method: str,
        target: int | None,
        layer: str | None,
        predictor: Predictor | None = None,
    ) -> Explained:
        """Explain with the serving model, or with ``predictor`` (another loaded version)."""
        prepared = await self._prepare(image, predictor)
        key: BatchKey = ("explain", id(prepared.predictor), method, layer or "")
        return await self._explainer.submit(key, ExplainItem(prepared.inputs, prepared.predictor, target))
