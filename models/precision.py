"""Number formats and memory layouts: whether this machine computes fast in bf16 (for training and
inference alike), and how a model infers on its device.

A CPU without bf16 instructions (AVX512-BF16 or AMX) emulates bf16 arithmetic in oneDNN: a ResNet-50
training step ran many times slower than fp32 on an AVX2-only EPYC, and inference 20 times slower.
"""

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles), so bf16 autocast pays off."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    # torch exposes these only privately; a torch without them is treated as having no native bf16.
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


#: The number formats by name, as autocast dtypes (None: fp32, no autocast).
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Number formats a model can be asked to infer in; "auto" picks the fastest that keeps accuracy.
PRECISIONS = ("auto", *DTYPES)


def precision_name(dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: the name of an autocast dtype (None: fp32)."""
    return next(name for name, value in DTYPES.items() if value == dtype)


#: The smallest batch that runs channels-last. The weights stay in the default layout and the input's
#: layout decides (oneDNN and cuDNN convolve channels-last when either is): on a 2-core x86 CPU,
#: SE-ResNet-50 at 112 px ran a batch of 16 about 20-30% faster channels-last (the ceiling of
#: ``python -m bench.service_load``, docs/PERFORMANCE.md), and a single photo no faster, often slower,
#: in interleaved timings.
CHANNELS_LAST_MIN_BATCH = 4

#: The smallest batch that a CPU runs in a reduced precision. On one thread of a lane (``app.lanes``),
#: as the service runs its model, SE-ResNet-50 at 112 px on a 2-core Xeon with AMX took 1.39x fp32's
#: time for a single photo under bf16 autocast, 1.10x for two, 0.96x for three and 0.62x for four
#: (``python -m bench.precision_batches --threads 1``, docs/performance/precision-batches-lanes.json;
#: on two threads of a 2-core EPYC with AVX512-BF16: 1.09x, 0.96x for two, precision-batches.json).
#: GPUs keep theirs.
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
        dtype = self.dtype_for(device, batch_size)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)


def choose_precision(
    device: torch.device, requested: str = "auto", *, channels_last: bool = True
) -> InferencePrecision:
    """The precision to infer in on ``device``.

    ``"auto"``: bf16 on a GPU that has it (else fp16) and on a CPU with bf16 instructions; fp32
    elsewhere, since emulated bf16 is many times slower than fp32. An explicit choice is taken as
    given, except bf16 on a CPU without bf16 instructions, which is refused for that reason.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; one of: {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            # Native bf16 from Ampere (compute capability 8.0) on; older GPUs emulate it, so fp16.
            native = torch.cuda.get_device_capability(device) >= (8, 0)
            dtype: torch.dtype | None = torch.bfloat16 if native else torch.float16
        else:
            dtype = torch.bfloat16 if cpu_has_native_bf16() else None
    else:
        dtype = DTYPES[requested]
        if device.type == "cpu" and dtype is torch.bfloat16 and not cpu_has_native_bf16():
            raise ValueError("bf16 asked for, but this CPU has no bf16 instructions (it would run emulated)")
        if device.type == "cpu" and dtype is torch.float16:
            raise ValueError("fp16 inference is for GPUs; on a CPU use fp32 or bf16")
    return InferencePrecision(dtype, channels_last)
