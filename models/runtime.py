"""Compiled inference: a model's forward pass run by OpenVINO instead of PyTorch eager.

OpenVINO's CPU plugin compiles the whole network ahead of time (fused kernels, bf16 where the CPU has
bf16 instructions, a thread pool of its own); on a 2-core AMD EPYC with AVX512-BF16 it ran the shipped
SE-ResNet-50 2.5x as fast as eager's best at batch 1 and 1.45x at batch 32 (docs/PERFORMANCE.md,
``python -m bench.service_load``).
The converted network returns everything serving needs from one pass: the logits, the last stage's
feature map and its global average (the embedding of :mod:`models.fingerprint`).

The network's head is global average pooling and one linear layer, so the gradient of a class score with
respect to the last stage's output is that class's weight row divided by H*W at every location
(:func:`head_gradients`): Grad-CAM, and the CAM methods that need only that layer's activations and
gradients, are computed from the feature map the runtime returns, with no backward pass. Which models
have such a head is checked on a probe input (:func:`linear_head`), not assumed from their names.

A converted network is cached under ``cache_dir`` keyed by the checkpoint's sha256, the input size,
OpenVINO's version and this module's output format, so a restart reads it instead of converting again,
and new weights or a new OpenVINO never read a stale one. Every load is checked against the eager
model on the probe input, so a damaged cache is converted again rather than served.

A model may also have an int8 network stored beside its checkpoint (``int8.xml``, made from training
photos by ``trashcam-train quantize``, :mod:`training.quantize`, which keeps it only when it loses
little accuracy): where it does and ``int8`` is on, it serves in place of the conversion, which still
runs what must be exact (fingerprints).
"""

import copy
import logging
import os
import re
import shutil
import threading
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from models.cam.base import resolve_layer
from models.cam.hooks import ActivationCapture
from models.checkpoint import file_sha256
from models.files import read_json

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "openvino"]
#: What runs a model's forward pass: "auto" is OpenVINO on a CPU (where it converts) and torch on a GPU.
BACKENDS: tuple[str, ...] = get_args(Backend)

#: The output format of the converted network; bumped whenever :class:`_ServingOutputs` changes, so
#: that no cached conversion of an older format is read.
CACHE_FORMAT = 1
#: The converted network's file in its cache folder (OpenVINO writes its weights beside it, ``.bin``).
NETWORK_FILE = "model.xml"
OUTPUT_NAMES = ("logits", "features", "embeddings")
#: How far the runtime's fp32 logits may be from eager's on the probe input, relative to their size.
PARITY_TOLERANCE = 1e-3
#: ... and its logits at the serving precision: bf16 moved them by under 1% of their size on the shipped
#: model, int8 by 2%; a network converted wrong moves them by their whole size.
SERVED_TOLERANCE = 0.1
#: A model's int8 network, stored beside its checkpoint (OpenVINO writes its weights beside it, ``.bin``).
QUANTIZED_NETWORK = "int8.xml"
#: ... and its record: the weights it was made from, the digests of its files, how it was made and what
#: it scored. Written last, so a network without one is not read.
QUANTIZED_RECORD = "int8.json"
#: The precision name of a quantized network.
INT8 = "int8"


class RuntimeUnavailableError(RuntimeError):
    """The model cannot run on the compiled runtime (not installed, not convertible, not a pooled linear
    head, or answers differently from eager): it runs on torch."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model manager runs its models: which ``backend``, where converted networks are cached, how
    many inference requests run at once (``streams``, one per inference lane) on how many threads each,
    and whether a model's stored int8 network serves."""

    backend: str = "torch"
    cache_dir: Path | None = None
    streams: int = 1
    threads: int = 1
    #: Serve a model's int8 network (:data:`QUANTIZED_NETWORK`) where one is stored for its weights.
    int8: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown inference backend {self.backend!r}; one of: {', '.join(BACKENDS)}")

    def compiled_on(self, device: torch.device) -> bool:
        """Whether models on ``device`` are tried on OpenVINO: "openvino", or "auto" on a CPU. OpenVINO
        asked for on a GPU is refused: its CPU plugin is what it runs here."""
        if self.backend == "openvino" and device.type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU, not on {device}: use auto or torch")
        return self.backend == "openvino" or (self.backend == "auto" and device.type == "cpu")


@dataclass(frozen=True)
class ForwardOutputs:
    """One forward pass: logits (B, classes), the last stage's features (B, C, h, w) and their global
    average (B, C), in fp32 on the CPU."""

    logits: Tensor
    features: Tensor
    embeddings: Tensor


def _probe(input_size: int, batch: int = 2) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, input_size, input_size, generator=generator)


def linear_head(model: nn.Module, input_size: int) -> nn.Linear:
    """The linear layer that ``model``'s logits are computed by from the global average of its CAM
    layer's output; ``RuntimeUnavailableError`` unless that holds on a probe input (the closed-form
    gradients of :func:`head_gradients` rest on it)."""
    head = getattr(model, "fc", None)
    features = getattr(model, "forward_features", None)
    if not isinstance(head, nn.Linear) or not callable(features):
        raise RuntimeUnavailableError(f"{type(model).__name__} has no forward_features and linear fc")
    probe = _probe(input_size)
    with torch.no_grad():
        with ActivationCapture(resolve_layer(model, None), track_gradients=False) as capture:
            logits = model(probe)
        feature_map = features(probe)
        pooled = head(feature_map.mean(dim=(2, 3)))
    if not (
        torch.allclose(capture.activation, feature_map, rtol=1e-4, atol=1e-5)
        and torch.allclose(pooled, logits, rtol=1e-4, atol=1e-4)
    ):
        raise RuntimeUnavailableError(
            f"{type(model).__name__}'s logits are not one linear layer over its CAM layer's pooled output"
        )
    return head


def head_gradients(head: nn.Linear, targets: Tensor, features_shape: torch.Size) -> Tensor:
    """d(logit of each image's target) / d(features) for a head of global average pooling and ``head``:
    the target's weight row divided by h*w, the same at every location (B, C, h, w)."""
    _, _, height, width = features_shape
    rows = head.weight.detach().float().cpu()[targets.cpu()] / (height * width)
    return rows[:, :, None, None].expand(features_shape)


class _ServingOutputs(nn.Module):
    """The network as converted: ``(logits, features, embeddings)`` from one pass."""

    def __init__(self, model: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.model.forward_features(images)  # type: ignore[operator]
        embeddings = features.mean(dim=(2, 3))
        return self.head(embeddings), features, embeddings


def _precision_hint(dtype: torch.dtype | None) -> str:
    """OpenVINO's inference precision for an autocast dtype (None: fp32)."""
    if dtype is None:
        return "f32"
    if dtype is torch.bfloat16:
        return "bf16"
    raise RuntimeUnavailableError(f"no OpenVINO CPU precision for {dtype}")


def _conversions(cache_dir: Path) -> Path:
    return cache_dir / "openvino"


def _cache_folder(cache_dir: Path, sha256: str, input_size: int, version: str) -> Path:
    """The folder of one conversion: the weights, the input size it was traced at (fixed in the network),
    OpenVINO's version and this module's output format."""
    safe_version = "".join(c if c.isalnum() or c in ".-_" else "_" for c in version)
    return _conversions(cache_dir) / f"{sha256}-{input_size}px-{safe_version}-format{CACHE_FORMAT}"


def forget_conversions(cache_dir: Path, sha256: str) -> int:
    """Remove every cached conversion of the weights ``sha256`` (each input size, OpenVINO version and
    format; about 100 MB each for SE-ResNet-50); how many were removed. For when the last stored model
    with those weights is deleted."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    folder = _conversions(cache_dir)
    removed = 0
    for entry in folder.glob(f"{sha256}-*") if folder.is_dir() else ():
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def convert_network(model: nn.Module, head: nn.Linear, input_size: int) -> Any:
    """``model`` with its ``head`` as an OpenVINO network of :data:`OUTPUT_NAMES`, any batch size."""
    import openvino as ov

    with warnings.catch_warnings():
        # The converter traces with torch.jit.trace, which warns of its own deprecation on every call.
        warnings.simplefilter("ignore", FutureWarning)
        network = ov.convert_model(
            _ServingOutputs(model, head).eval(),
            example_input=_probe(input_size, batch=1),
            input=[ov.PartialShape([-1, 3, input_size, input_size])],
        )
    for output, name in zip(network.outputs, OUTPUT_NAMES, strict=True):
        output.get_tensor().set_names({name})
    return network


def _save(network: Any, folder: Path) -> None:
    """Write ``network`` to ``folder`` whole or not at all: into a folder of its own, renamed into place."""
    import openvino as ov

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f"{folder.name}.{uuid.uuid4().hex}.tmp")
    try:
        ov.save_model(network, staging / NETWORK_FILE, compress_to_fp16=False)
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / NETWORK_FILE).exists():
                raise
            # Another process cached the same conversion first: theirs is as good.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _Compiled:
    """One converted network (and its int8 version, where given) shared by every lane: compiled once per
    precision, on first use."""

    def __init__(
        self, network: Any, options: RuntimeOptions, dtype: torch.dtype | None, quantized: Any = None
    ) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.network = network
        self.quantized = quantized
        self.options = options
        self.hint = INT8 if quantized is not None else _precision_hint(dtype)
        self._by_hint: dict[str, Any] = {}
        self._lock = threading.Lock()

    def with_quantized(self, quantized: Any) -> "_Compiled":
        """This network serving ``quantized`` instead: what it compiled already (its fp32, for what must
        be exact) is shared, not compiled again."""
        serving = copy.copy(self)  # the same core, compiled networks and lock
        serving.quantized, serving.hint = quantized, INT8
        return serving

    def compiled(self, hint: str) -> Any:
        network = self.quantized if hint == INT8 else self.network
        with self._lock:
            if hint not in self._by_hint:
                self._by_hint[hint] = self.core.compile_model(
                    network,
                    "CPU",
                    {
                        # What int8 does not cover runs in fp32: as fast as bf16 there, and closer to eager.
                        "INFERENCE_PRECISION_HINT": "f32" if hint == INT8 else hint,
                        # One stream per inference lane, so that lanes run side by side as on torch.
                        "NUM_STREAMS": str(self.options.streams),
                        "INFERENCE_NUM_THREADS": str(self.options.streams * self.options.threads),
                    },
                )
            return self._by_hint[hint]


class CompiledNetwork:
    """A model's forward pass on OpenVINO, for one inference lane (an inference request is not shared
    between threads: :meth:`for_lane` gives another lane its own)."""

    name = "openvino"

    def __init__(self, compiled: _Compiled, head: nn.Linear) -> None:
        self._compiled = compiled
        #: The model's head, for the gradients of :func:`head_gradients`.
        self.head = head
        self._requests: dict[str, Any] = {}

    def for_lane(self) -> "CompiledNetwork":
        return CompiledNetwork(self._compiled, self.head)

    @property
    def precision(self) -> str:
        return self._compiled.hint

    def __call__(self, images: Tensor, *, exact: bool = False) -> ForwardOutputs:
        """The forward pass of a normalised batch (B, 3, S, S); ``exact`` runs it in fp32 whatever the
        serving precision (fingerprints: the index of training photos was built in fp32)."""
        hint = "f32" if exact else self._compiled.hint
        request = self._requests.get(hint)
        if request is None:
            request = self._requests[hint] = self._compiled.compiled(hint).create_infer_request()
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        request.infer({0: array}, share_inputs=True)
        # The request's output buffers are reused by its next call: copied out.
        logits, features, embeddings = (
            torch.from_numpy(request.get_output_tensor(index).data.copy()) for index in range(3)
        )
        return ForwardOutputs(logits, features, embeddings)


def openvino_version() -> str:
    """The installed OpenVINO's version; ``RuntimeUnavailableError`` when it is not installed."""
    try:
        import openvino as ov
    except ImportError as error:
        raise RuntimeUnavailableError(f"OpenVINO is not installed: {error}") from None
    return str(ov.get_version())


def read_quantized(folder: Path, sha256: str) -> Any:
    """The int8 network stored in ``folder`` for the weights ``sha256``; None when there is none, or it
    was made from other weights, or its files are not the ones its record names (said in the log)."""
    record_path = folder / QUANTIZED_RECORD
    if not sha256 or not record_path.is_file():
        return None
    network_path = folder / QUANTIZED_NETWORK
    try:
        record = read_json(record_path)
        if record.get("model_sha256") != sha256:
            logger.warning("%s: made from other weights than %s, not served", record_path, sha256[:12])
            return None
        for path, key in (
            (network_path, "network_sha256"),
            (network_path.with_suffix(".bin"), "weights_sha256"),
        ):
            if file_sha256(path) != record.get(key):
                logger.warning("%s: not the file its record %s names, not served", path, record_path.name)
                return None
        import openvino as ov

        return ov.Core().read_model(network_path)
    except (OSError, ValueError, AttributeError, RuntimeError, ImportError) as error:
        logger.warning("%s: unreadable int8 network, not served: %s", folder, error)
        return None


def compile_model(
    model: nn.Module,
    *,
    input_size: int,
    sha256: str,
    options: RuntimeOptions,
    dtype: torch.dtype | None,
    quantized_in: Path | None = None,
) -> CompiledNetwork:
    """``model`` (in eval mode, batch norms folded) on OpenVINO at the precision of ``dtype``: read from
    the cache, else converted and cached; compiled and checked against eager here, so that no request
    waits for it. Where ``options.int8`` is on and ``quantized_in`` (the checkpoint's folder) holds an int8
    network of these weights, that one serves. ``RuntimeUnavailableError`` says why it cannot run there."""
    head = linear_head(model, input_size)
    version = openvino_version()
    folder = None
    if options.cache_dir is not None and sha256:
        folder = _cache_folder(options.cache_dir, sha256, input_size, version)
    quantized = None
    if options.int8 and quantized_in is not None:
        quantized = read_quantized(quantized_in, sha256)
    try:
        compiled = _compile_checked(model, head, input_size, options, dtype, folder)
        if quantized is not None:
            compiled = _with_quantized(compiled, quantized, model, input_size)
        return compiled
    except RuntimeUnavailableError:
        raise
    except Exception as error:  # OpenVINO raises RuntimeError and others for what it cannot compile or run
        raise RuntimeUnavailableError(f"OpenVINO could not run the model: {error}") from error


def _compile_checked(
    model: nn.Module,
    head: nn.Linear,
    input_size: int,
    options: RuntimeOptions,
    dtype: torch.dtype | None,
    folder: Path | None,
) -> CompiledNetwork:
    cached = _read_cached(folder)
    if cached is not None:
        compiled = CompiledNetwork(_Compiled(cached, options, dtype), head)
        if _answers_as_eager(compiled, model, input_size):
            return compiled
        logger.warning("%s: cached conversion answers differently from the model, converting again", folder)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)  # unreadable or wrong: replaced below
    try:
        network = convert_network(model, head, input_size)
    except Exception as error:  # the converter raises many kinds of error for what it cannot trace
        raise RuntimeUnavailableError(f"OpenVINO could not convert the model: {error}") from error
    compiled = CompiledNetwork(_Compiled(network, options, dtype), head)
    if not _answers_as_eager(compiled, model, input_size):
        raise RuntimeUnavailableError(
            f"the converted model's logits ({compiled.precision}) differ from eager's on a probe input"
        )
    if folder is not None:
        try:
            _save(network, folder)
        except (OSError, RuntimeError) as error:
            logger.warning(
                "%s: the conversion is not cached (the next start converts again): %s", folder, error
            )
    return compiled


def _with_quantized(
    compiled: CompiledNetwork, quantized: Any, model: nn.Module, input_size: int
) -> CompiledNetwork:
    """``compiled`` serving its int8 network ``quantized`` (its conversion still runs what must be
    exact), where int8 answers as eager does on the probe input; else ``compiled`` as it is, logged."""
    shared = compiled._compiled
    candidate = CompiledNetwork(shared.with_quantized(quantized), compiled.head)
    try:
        if _answers_as_eager(candidate, model, input_size):
            return candidate
        why = "its logits differ from eager's on a probe input"
    except RuntimeError as error:  # OpenVINO's error for a network it cannot compile or run
        why = str(error)
    logger.warning("the int8 network does not serve (%s): serving %s", why, shared.hint)
    return compiled


def _read_cached(folder: Path | None) -> Any:
    """The network cached in ``folder``; None when there is none, or it cannot be read (said in the log)."""
    if folder is None or not (folder / NETWORK_FILE).exists():
        return None
    import openvino as ov

    try:
        return ov.Core().read_model(folder / NETWORK_FILE)
    except RuntimeError as error:
        logger.warning("%s: unreadable cached conversion, converting again: %s", folder, error)
        return None


def _answers_as_eager(compiled: CompiledNetwork, model: nn.Module, input_size: int) -> bool:
    """Whether the runtime's logits match eager's on the probe input: in fp32 to within rounding, and at
    the serving precision to within what bf16 moves them (a broken network moves them further). Both
    compile here, so that the first request does not wait for it."""
    probe = _probe(input_size)
    with torch.no_grad():
        expected = model(probe)
    scale = max(1.0, float(expected.abs().max()))
    for got, tolerance in (
        (compiled(probe, exact=True).logits, PARITY_TOLERANCE),
        (compiled(probe).logits, SERVED_TOLERANCE),
    ):
        if got.shape != expected.shape or float((got - expected).abs().max()) > tolerance * scale:
            return False
    return True
