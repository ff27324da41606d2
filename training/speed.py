"""Timing training steps at fp32 against mixed precision, to decide whether ``--amp`` pays off here."""

import statistics
import time
from dataclasses import dataclass

import torch

from models import create_model
from models.precision import DTYPES
from training.engine import train_step


@dataclass(frozen=True)
class StepTiming:
    precision: str
    seconds_per_step: float
    images_per_second: float
    final_loss: float


def time_train_steps(
    model_name: str,
    *,
    precision: str = "fp32",
    batch_size: int = 32,
    input_size: int = 128,
    steps: int = 5,
    warmup: int = 2,
    device: torch.device | None = None,
    seed: int = 0,
) -> StepTiming:
    """Median wall time of ``steps`` Adam training steps on random data, after ``warmup`` untimed ones."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {tuple(DTYPES)}")
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=6).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(batch_size, 3, input_size, input_size, device=device)
    labels = torch.randint(0, 6, (batch_size,), device=device)
    times, loss = [], torch.zeros(())
    for index in range(warmup + steps):
        started = time.perf_counter()
        loss, _ = train_step(
            model,
            images,
            labels,
            optimizer=optimizer,
            scaler=scaler,
            criterion=criterion,
            amp=DTYPES[precision],
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return StepTiming(precision, seconds, batch_size / seconds, float(loss))
