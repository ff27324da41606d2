"""Number formats and memory layouts: the one rule for which reduced precision a device computes fast
in (:func:`native_dtype`), which serving (:func:`choose_precision`) and training (:func:`amp_dtype`)
both follow, and how a model infers on its device.

A CPU without bf16 instructions (AVX512-BF16 or AMX) emulates bf16 arithmetic in oneDNN: a ResNet-50
training step ran many times slower than fp32 on an AVX2-only EPYC, and inference 20 times slower.
"""

import contextlib
import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from models.machine import cpu_name

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles), so bf16 autocast pays off."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    # torch exposes these only privately; a torch without them is treated as having no native bf16.
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def native_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision ``device`` computes fast in: bf16 on a GPU from Ampere (compute capability
    8.0) on, which has it natively, else fp16; bf16 on a CPU with bf16 instructions; none (fp32) on
    other CPUs, where emulated bf16 is many times slower than fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def amp_dtype(device: torch.device, enabled: bool | None) -> torch.dtype | None:
    """The autocast dtype of training (and of scoring, with ``--amp``): ``None`` (not set) and ``True``
    are the device's native one (:func:`native_dtype`; fp16 trains with a GradScaler); ``False`` is fp32.
    Asked for on a CPU without bf16 instructions, it says so and trains in fp32."""
    if enabled is False:
        return None
    dtype = native_dtype(device)
    if dtype is None and enabled:
        logger.warning("%s has no bf16 instructions; training in fp32 instead", cpu_name())
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """Mixed precision at ``dtype`` on ``device``, or nothing when ``dtype`` is ``None``."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


#: The number formats by name, as autocast dtypes (None: fp32, no autocast).
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Number formats a model can be asked to infer in; "auto" picks the fastest that keeps accuracy.
PRECISIONS = ("auto", *DTYPES)


def precision_name(dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: the name of an autocast dtype (None: fp32)."""
    return next(name for name, value in DTYPES.items() if value == dtype)


#: The smallest batch that runs channels-last. The weights stay in the default layout and the input's
#: layout decides (oneDNN and cuDNN convolve channels-last when either is): batches gain from it and a
#: single photo does not (docs/PERFORMANCE.md, ``python -m bench.service_load``).
CHANNELS_LAST_MIN_BATCH = 4

#: The smallest batch that a CPU runs in a reduced precision: under it, autocast's casts cost more than
#: bf16 saves, on one thread of a lane as the service runs its model (docs/PERFORMANCE.md,
#: ``python -m bench.precision_batches``). GPUs keep theirs.
CPU_REDUCED_MIN_BATCH = 3


@dataclass(frozen=True)
class InferencePrecision:
    """How a model runs its forward pass: in fp32 or under autocast to ``dtype``, and whether batches
    of :data:`CHANNELS_LAST_MIN_BATCH` or more go in the channels-last layout (NHWC)."""

    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def name(self) -> str:
        return precision_name(self.dtype) + ("+channels_last" if self.channels_last else "")

    def dtype_for(self, device: torch.device, batch_size: int) -> torch.dtype | None:
        """The autocast dtype a batch of ``batch_size`` runs in (None: fp32): on a CPU, batches under
        :data:`CPU_REDUCED_MIN_BATCH` run in fp32, which is faster for them."""
        if device.type == "cpu" and batch_size < CPU_REDUCED_MIN_BATCH:
            return None
        return self.dtype

    def inputs(self, batch: Tensor) -> Tensor:
        """``batch`` in the layout its size runs fastest in."""
        if self.channels_last and batch.shape[0] >= CHANNELS_LAST_MIN_BATCH:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch.contiguous()

    def autocast(self, device: torch.device, batch_size: int) -> AbstractContextManager[object]:
        """Autocast to the dtype of a batch of ``batch_size`` (see :meth:`dtype_for`)."""
        return autocast(device, self.dtype_for(device, batch_size))


def choose_precision(
    device: torch.device, requested: str = "auto", *, channels_last: bool = True
) -> InferencePrecision:
    """The precision to infer in on ``device``.

    ``"auto"``: the device's native reduced precision (:func:`native_dtype`), fp32 where it has none.
    An explicit choice is taken as given, except bf16 on a CPU without bf16 instructions, which is
    refused since it would run emulated.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; one of: {', '.join(PRECISIONS)}")
    if requested == "auto":
        dtype = native_dtype(device)
    else:
        dtype = DTYPES[requested]
        if device.type == "cpu" and dtype is torch.bfloat16 and not cpu_has_native_bf16():
            raise ValueError("bf16 asked for, but this CPU has no bf16 instructions (it would run emulated)")
        if device.type == "cpu" and dtype is torch.float16:
            raise ValueError("fp16 inference is for GPUs; on a CPU use fp32 or bf16")
    return InferencePrecision(dtype, channels_last)
