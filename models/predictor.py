"""A loaded model ready to classify and explain photos: preprocessing from its spec, inference on
its device in its precision, explanations from the same forward pass."""

import copy
import dataclasses
import functools
import itertools
import logging
import math
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch import Tensor, nn

from models.calibration import Calibration, Thresholds, energy_score
from models.cam import FEATURE_MAP_METHODS, PER_CHANNEL_METHODS, compute_cam, get_cam_method, resolve_layer
from models.cam.base import resolve_targets
from models.checkpoint import ModelSpec, build_model, load_checkpoint
from models.fingerprint import EmbeddingHook, embed, hash_bits
from models.fusion import fold_batch_norms
from models.ood import OOD_FILE, FeatureBank, NoFeatureBankError
from models.precision import InferencePrecision
from models.runtime import (
    CompiledNetwork,
    RuntimeOptions,
    RuntimeUnavailableError,
    compile_model,
    head_gradients,
)
from models.similarity import INDEX_FILE, FingerprintIndex, NoIndexError
from models.transforms import PixelScaling, square_pixels

logger = logging.getLogger(__name__)


def select_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` (or None): the GPU when there is one, else the CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


@dataclass(frozen=True)
class Scores:
    """Calibrated probabilities (B, classes), energy scores (B,) and feature distances to the training
    photos (B,; None, or NaN for a photo, where a model has no feature bank) of a batch, on the CPU,
    which model answered each photo (the predictor asked, or the base it routed the photo to) and which
    backend ran it ("torch" or "openvino")."""

    probabilities: Tensor
    energies: Tensor
    distances: Tensor | None
    answered_by: tuple["Predictor", ...] = dataclasses.field(default=(), kw_only=True)
    backends: tuple[str, ...] = dataclasses.field(default=(), kw_only=True)

    def distance_list(self) -> list[float | None]:
        """Each photo's feature distance, or None for each where there is none."""
        if self.distances is None:
            return [None] * len(self.energies)
        return [None if math.isnan(value) else value for value in self.distances.tolist()]


@dataclass(frozen=True)
class Explanation(Scores):
    """Scores, heatmaps (B, S, S) in [0, 1] and explained classes (B,), on the CPU."""

    heatmaps: Tensor
    targets: Tensor


@dataclass(frozen=True)
class Fingerprints(Scores):
    """Scores, pooled-feature embeddings (B, D) and their 64-bit hashes (B,), on the CPU."""

    embeddings: Tensor
    hashes: list[int]


ScoresT = TypeVar("ScoresT", bound=Scores)


class Predictor:
    """A model with its spec on a device; swap whole predictors to change models.

    A fine-tune that serves beside its base (its feature bank routes, and :attr:`base` is set) answers
    the photos its bank finds nearer the base's training photos with the base: its own answer for those
    is the one that forgets what the site did not upload.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        name: str,
        version: str,
        device: torch.device,
        sha256: str = "",
        path: str | None = None,
        thresholds: Thresholds | None = None,
        precision: InferencePrecision | None = None,
        runtime: RuntimeOptions | None = None,
    ) -> None:
        self.precision = precision or InferencePrecision()
        # Explanations need no parameter gradients; freezing once here spares every call.
        self.model = model.to(device).eval().requires_grad_(False)
        fold_batch_norms(self.model)
        #: The forward pass compiled for OpenVINO (None: the model runs on torch eager alone).
        self.runtime = _compiled(
            self.model, spec, sha256, path, name, version, device, self.precision, runtime
        )
        self.spec = spec
        self.name = name
        self.version = version
        self.device = device
        self.sha256 = sha256
        #: The checkpoint file it was loaded from, for jobs that start from the serving model.
        self.path = path
        #: The training photos' features, for the feature distance (None: not stored with the model).
        self.feature_bank = _feature_bank(path, sha256)
        self.calibration = Calibration.from_dict(spec.calibration).with_thresholds(
            thresholds or Thresholds(), None if self.feature_bank is None else self.feature_bank.validation
        )
        # Photos are prepared as uint8 pixels and scaled a batch at a time on the device: a quarter of
        # the bytes to stack and move, and one multiply-add a batch rather than one a photo.
        self._scaling = PixelScaling(spec.mean, spec.std, device)
        #: The model that answers the photos routed to it (set by whoever loads both; None: none).
        self.base: Predictor | None = None
        self._replicas: dict[int, Predictor] = {}
        self._replicas_lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        *,
        name: str,
        version: str | None,
        device: torch.device,
        thresholds: Thresholds | None = None,
        precision: InferencePrecision | None = None,
        runtime: RuntimeOptions | None = None,
    ) -> "Predictor":
        """Load a checkpoint file; ``version`` None names it by its weights' digest. ``thresholds``
        override the "unsure" thresholds of the checkpoint's calibration; ``runtime`` says whether it
        runs on OpenVINO (torch when None)."""
        checkpoint = load_checkpoint(path)
        model = build_model(checkpoint, source=path)
        version = version or checkpoint.sha256[:12]
        return cls(
            model,
            checkpoint.spec,
            name=name,
            version=version,
            device=device,
            sha256=checkpoint.sha256,
            path=path,
            thresholds=thresholds,
            precision=precision,
            runtime=runtime,
        )

    @property
    def served_precision(self) -> str:
        """The precision its forward passes run in, named as torch's are (``InferencePrecision.name``:
        "fp32", "bf16+channels_last") or, compiled, "fp32", "bf16" or "int8"."""
        if self.runtime is None:
            return self.precision.name
        return {"f32": "fp32"}.get(self.runtime.precision, self.runtime.precision)

    @property
    def backend(self) -> str:
        """What runs its forward passes: "openvino" or "torch" (explanations of a layer other than the
        last stage run on torch either way; each result says which ran it)."""
        return "torch" if self.runtime is None else self.runtime.name

    def replica(self, lane: int) -> "Predictor":
        """This predictor for inference lane ``lane`` (:mod:`app.lanes`): lane 0 runs this one, every
        other lane a copy made on first use, with module objects of its own and this one's weights.
        Lanes run at the same time, and a CAM hooks the modules of the model it runs on: on shared
        modules, one lane's hooks would capture another lane's forward pass."""
        if lane == 0:
            return self
        with self._replicas_lock:
            replica = self._replicas.get(lane)
            if replica is None:
                replica = copy.copy(self)
                tensors = itertools.chain(self.model.parameters(), self.model.buffers())
                replica.model = copy.deepcopy(self.model, memo={id(tensor): tensor for tensor in tensors})
                replica._replicas, replica._replicas_lock = {}, threading.Lock()
                # An inference request runs one call at a time: each lane has its own.
                replica.runtime = None if self.runtime is None else self.runtime.for_lane()
                replica.base = None if self.base is None else self.base.replica(lane)
                self._replicas[lane] = replica
            return replica

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    def can_route_to(self, base: "Predictor") -> bool:
        """Whether ``base`` can answer for this model: its feature bank routes, and both read a photo
        the same way (input size, normalisation) and answer in the same classes."""
        keys = ("input_size", "mean", "std", "class_names")
        return (
            self.feature_bank is not None
            and self.feature_bank.route_margin is not None
            and all(getattr(self.spec, key) == getattr(base.spec, key) for key in keys)
        )

    def _routed(
        self,
        result: ScoresT,
        batch: Tensor,
        embeddings: Tensor | None,
        answer: Callable[["Predictor", Tensor, Tensor], ScoresT],
    ) -> ScoresT:
        """``result``, with the photos the bank routes to the base answered by it: ``answer(base, inputs,
        rows)`` gives the base's result for the ``inputs`` of ``rows``."""
        if self.base is None or self.feature_bank is None or embeddings is None:
            return result
        to_base = self.feature_bank.routes_to_base(embeddings.detach().float().cpu())
        if to_base is None or not to_base.any():
            return result
        rows = torch.from_numpy(to_base.nonzero()[0])
        routed = answer(self.base, batch[rows.to(batch.device)], rows)
        return _merge(result, rows, routed)

    def prepare(self, image: Image.Image) -> Tensor:
        """One photo as the model's pixels, uint8 (3, S, S) on the CPU, resized as evaluation resizes
        (``models.transforms.EvalTransform``); callers run it off the inference thread, so that a batch
        only stacks what its requests prepared, and :meth:`inputs` normalises it."""
        return square_pixels(image, self.spec.input_size)

    def inputs(self, images: Sequence[Image.Image] | Tensor) -> Tensor:
        """A batch on the model's device and in its layout, from photos or from tensors stacked:
        :meth:`prepare`'s uint8 pixels (normalised here, as ``EvalTransform`` does a photo at a time)
        or inputs normalised already. The compiled runtime reads the default layout: channels-last
        would be a copy there and a copy back."""
        batch = images if isinstance(images, Tensor) else torch.stack([self.prepare(i) for i in images])
        batch = batch.to(self.device)
        if batch.dtype == torch.uint8:
            batch = self._scaling(batch)
        if self.runtime is not None:
            return batch.contiguous()
        return self.precision.inputs(batch)

    def scores(self, logits: Tensor, embeddings: Tensor | None = None, *, backend: str = "torch") -> Scores:
        """Calibrated probabilities, energy scores and (given the pooled ``embeddings`` and a feature
        bank) feature distances of a batch that ``backend`` computed."""
        logits = logits.detach().float().cpu()
        distances = None
        if self.feature_bank is not None and embeddings is not None:
            distances = torch.from_numpy(self.feature_bank.scores(embeddings.detach().float().cpu()))
        return Scores(
            probabilities=self.calibration.probabilities(logits),
            energies=energy_score(logits),
            distances=distances,
            answered_by=(self,) * len(logits),
            backends=(backend,) * len(logits),
        )

    def is_unsure(self, probabilities: Sequence[float], energy: float, distance: float | None = None) -> bool:
        """Whether a prediction (its calibrated probabilities, energy and feature distance) should go to
        a person."""
        return self.calibration.is_unsure(max(probabilities), energy, distance)

    def unsure_reasons(
        self, probabilities: Sequence[float], energy: float, distance: float | None = None
    ) -> list[str]:
        """Why a prediction should go to a person (none: it is sure)."""
        return self.calibration.unsure_reasons(max(probabilities), energy, distance)

    def _forward(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        """The logits of a batch and, where the model has a feature bank, its pooled features."""
        if self.runtime is not None:
            out = self.runtime(batch)
            return out.logits, out.embeddings if self.feature_bank is not None else None
        hook = EmbeddingHook(self.model) if self.feature_bank is not None else None
        try:
            with torch.inference_mode(), self.precision.autocast(self.device, batch.shape[0]):
                logits = self.model(batch)
        finally:
            if hook is not None:
                hook.remove()
        return logits, None if hook is None else hook.features

    def classify(self, images: Sequence[Image.Image] | Tensor) -> Scores:
        """Calibrated class probabilities, energy scores and feature distances of ``images``."""
        batch = self.inputs(images)
        logits, features = self._forward(batch)
        scores = self.scores(logits, features, backend=self.backend)
        return self._routed(scores, batch, features, lambda base, inputs, _: base.classify(inputs))

    def fingerprint(self, images: Sequence[Image.Image] | Tensor) -> Fingerprints:
        """Scores, embeddings and hashes of ``images``, from one forward pass, in fp32 whatever the
        precision: the index of training photos was built in fp32, and bf16 would flip hash bits."""
        batch = self.inputs(images)
        if self.runtime is not None:
            out = self.runtime(batch, exact=True)
            logits, embeddings = out.logits, out.embeddings
        else:
            logits, embeddings = embed(self.model, batch)
        scores = self.scores(logits, embeddings, backend=self.backend)
        own = Fingerprints(
            probabilities=scores.probabilities,
            energies=scores.energies,
            distances=scores.distances,
            embeddings=embeddings.cpu(),
            hashes=[int(value) for value in hash_bits(embeddings.cpu())],
            answered_by=scores.answered_by,
            backends=scores.backends,
        )
        return self._routed(own, batch, embeddings, lambda base, inputs, _: base.fingerprint(inputs))

    @functools.cached_property
    def index(self) -> FingerprintIndex:
        """The index of the training photos stored beside the checkpoint (``NoIndexError`` if none),
        checked to belong to these weights."""
        if self.path is None:
            raise NoIndexError(f"{self.name}:{self.version} was not loaded from a file: it has no index")
        return FingerprintIndex.load(Path(self.path).parent / INDEX_FILE, model_sha256=self.sha256)

    def explain(
        self,
        images: Sequence[Image.Image] | Tensor,
        *,
        method: str = "gradcam",
        targets: Sequence[int | None] | None = None,
        layer: str | None = None,
    ) -> Explanation:
        """Probabilities and CAM heatmaps from one forward pass. Photos this model passes to its base are
        explained by the base; for a method of a forward pass per channel, they are told apart by a
        plain forward pass first, so that none is explained twice."""
        batch = self.inputs(images)
        if method in PER_CHANNEL_METHODS and self.base is not None:
            to_base = self._to_base(batch)
            if to_base is not None and to_base.any():
                kept = torch.from_numpy((~to_base).nonzero()[0])
                routed = torch.from_numpy(to_base.nonzero()[0])

                def chosen(rows: Tensor) -> list[int | None] | None:
                    return None if targets is None else [targets[i] for i in rows.tolist()]

                assert self.base is not None
                by_base = self.base.explain(
                    batch[routed.to(batch.device)], method=method, targets=chosen(routed), layer=layer
                )
                if len(kept) == 0:
                    return by_base
                own = self._explain_own(batch[kept.to(batch.device)], method, chosen(kept), layer)
                return _merge(_spread(own, kept, len(to_base)), routed, by_base)
        return self._explain_own(batch, method, targets, layer, route=True)

    def _to_base(self, batch: Tensor) -> "npt.NDArray[np.bool_] | None":
        """Which photos of ``batch`` the feature bank sends to the base, from one plain forward pass."""
        if self.feature_bank is None:
            return None
        _, features = self._forward(batch)
        assert features is not None
        return self.feature_bank.routes_to_base(features.detach().float().cpu())

    def _explains_from_features(self, method: str, layer: str | None) -> bool:
        """Whether ``method`` on ``layer`` runs on the runtime's forward passes alone: a method of
        activations and gradients (:data:`FEATURE_MAP_METHODS`), whose gradients follow from the pooled
        linear head, or of activations and forward passes (:data:`PER_CHANNEL_METHODS`), on the last
        stage."""
        if self.runtime is None or method not in FEATURE_MAP_METHODS | PER_CHANNEL_METHODS:
            return False
        return layer is None or resolve_layer(self.model, layer) is resolve_layer(self.model, None)

    def _explain_on_runtime(
        self, batch: Tensor, method: str, targets: Sequence[int | None] | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Heatmaps, logits, explained classes and pooled features from the runtime: one forward pass, and
        for a per-channel method its passes over the masked copies."""
        assert self.runtime is not None
        out = self.runtime(batch)
        explained = resolve_targets(out.logits, targets)
        runtime = self.runtime
        cam = get_cam_method(method)(self.model, None, forward=lambda inputs: runtime(inputs).logits)
        gradients = None
        if cam.uses_gradients:
            gradients = head_gradients(self.runtime.head, explained, out.features.shape)
        return cam.heatmaps(batch, out.features, gradients, explained), out.logits, explained, out.embeddings

    def _explain_own(
        self,
        batch: Tensor,
        method: str,
        targets: Sequence[int | None] | None,
        layer: str | None,
        *,
        route: bool = False,
    ) -> Explanation:
        """Explain ``batch`` with this model; with ``route``, the photos its bank sends to the base are
        explained again by the base."""
        features: Tensor | None
        if self._explains_from_features(method, layer):
            heatmaps, logits, explained, pooled = self._explain_on_runtime(batch, method, targets)
            features, backend = pooled if self.feature_bank is not None else None, self.backend
        else:
            # The first forward pass's pooled features (Score-CAM runs more, on masked copies).
            hook = EmbeddingHook(self.model, first_only=True) if self.feature_bank is not None else None
            try:
                with self.precision.autocast(self.device, batch.shape[0]):
                    heatmaps, logits, explained = compute_cam(
                        self.model, batch, method=method, targets=targets, layer=layer
                    )
            finally:
                if hook is not None:
                    hook.remove()
            features, backend = None if hook is None else hook.features, "torch"
        scores = self.scores(logits, features, backend=backend)
        own = Explanation(
            probabilities=scores.probabilities,
            energies=scores.energies,
            distances=scores.distances,
            heatmaps=heatmaps.float().cpu(),
            targets=explained.cpu(),
            answered_by=scores.answered_by,
            backends=scores.backends,
        )

        if not route:
            return own

        def explained_by_base(base: Predictor, inputs: Tensor, rows: Tensor) -> Explanation:
            chosen = None if targets is None else [targets[i] for i in rows.tolist()]
            return base.explain(inputs, method=method, targets=chosen, layer=layer)

        return self._routed(own, batch, features, explained_by_base)


def _spread(result: ScoresT, rows: Tensor, size: int) -> ScoresT:
    """``result`` (of the photos ``rows`` of a batch of ``size``) laid out at those rows of a result for
    the whole batch; the other rows are placeholders for :func:`_merge` to fill."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, Tensor):
            full = torch.zeros((size, *value.shape[1:]), dtype=value.dtype)
            full[rows] = value
            changes[field.name] = full
        elif value is None:
            changes[field.name] = None
        else:
            items: list[Any] = [None] * size
            for position, row in enumerate(rows.tolist()):
                items[row] = value[position]
            changes[field.name] = type(value)(items)
    return dataclasses.replace(result, **changes)


def _merge(result: ScoresT, rows: Tensor, routed: ScoresT) -> ScoresT:
    """``result`` with its ``rows`` replaced by those of ``routed`` (a result of the same kind for those
    photos only); a distance one of them lacks is NaN."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(result):
        mine, theirs = getattr(result, field.name), getattr(routed, field.name)
        if field.name == "distances":
            mine = torch.full((len(result.energies),), math.nan) if mine is None else mine
            theirs = torch.full((len(rows),), math.nan) if theirs is None else theirs
        if isinstance(mine, Tensor):
            merged = mine.clone()
            merged[rows] = theirs.to(merged.dtype)
            changes[field.name] = merged
        else:
            items = list(mine)
            for position, row in enumerate(rows.tolist()):
                items[row] = theirs[position]
            changes[field.name] = type(mine)(items)
    return dataclasses.replace(result, **changes)


def _compiled(
    model: nn.Module,
    spec: ModelSpec,
    sha256: str,
    path: str | None,
    name: str,
    version: str,
    device: torch.device,
    precision: InferencePrecision,
    options: RuntimeOptions | None,
) -> CompiledNetwork | None:
    """``model`` compiled for OpenVINO where ``options`` ask for it on ``device`` (its int8 network where
    one is stored beside its checkpoint at ``path``); None (torch), with one log line saying why, where it
    cannot run there."""
    if options is None or not options.compiled_on(device):
        return None
    try:
        return compile_model(
            model,
            input_size=spec.input_size,
            sha256=sha256,
            options=options,
            dtype=precision.dtype,
            quantized_in=None if path is None else Path(path).parent,
        )
    except RuntimeUnavailableError as error:
        logger.warning("%s:%s runs on torch: %s", name, version, error)
        return None


def _feature_bank(path: str | None, sha256: str) -> FeatureBank | None:
    """The feature bank stored beside the checkpoint at ``path``, if there is one for these weights."""
    if path is None:
        return None
    try:
        return FeatureBank.load(Path(path).parent / OOD_FILE, model_sha256=sha256)
    except NoFeatureBankError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        # The model still answers; only its feature distance is not measured.
        logger.warning("%s: unreadable feature bank, serving without one: %s", path, error)
        return None
