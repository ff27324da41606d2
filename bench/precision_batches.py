"""Which number format each batch size runs fastest in, where the service runs its model: a thread of
its own (not the main thread), one call per batch, autocast entered per call.

    python -m bench.precision_batches --checkpoint weights/se_resnet50/model.pt

For each batch size, fp32 and each reduced precision the device has (bf16 on a CPU with bf16
instructions; bf16 or fp16 on a GPU), with batch norms folded and batches of 4 or more channels-last
as the service runs them, in interleaved rounds: photos/s, and the reduced precision's time as a
ratio of fp32's (under 1: faster). This is what ``models.precision.CPU_REDUCED_MIN_BATCH`` rests on.
"""

import argparse
import contextlib
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.record import run_record, write_json
from models.checkpoint import build_model, load_checkpoint
from models.fusion import fold_batch_norms
from models.precision import CHANNELS_LAST_MIN_BATCH, cpu_has_native_bf16, precision_name
from models.predictor import select_device


def reduced_dtypes(device: torch.device) -> list[torch.dtype]:
    if device.type == "cuda":
        return [torch.bfloat16, torch.float16]
    return [torch.bfloat16] if cpu_has_native_bf16() else []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per measurement")
    parser.add_argument(
        "--threads", type=int, help="torch threads of the measuring thread (the service's lanes: app.lanes)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = select_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    model = build_model(checkpoint).eval().to(device)
    fold_batch_norms(model)
    size = checkpoint.spec.input_size
    dtypes: list[torch.dtype | None] = [None, *reduced_dtypes(device)]
    threads = args.threads or torch.get_num_threads()
    thread = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="inference", initializer=torch.set_num_threads, initargs=(threads,)
    )

    def forward(batch: torch.Tensor, dtype: torch.dtype | None) -> None:
        cast = contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
        with torch.inference_mode(), cast:
            model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def photos_per_s(batch: torch.Tensor, dtype: torch.dtype | None) -> float:
        thread.submit(forward, batch, dtype).result()  # warm-up: kernels chosen, weights cast
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            thread.submit(forward, batch, dtype).result()
            done += batch.shape[0]
        return done / (time.perf_counter() - started)

    samples: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for size_of_batch in args.batches:
            batch = torch.randn(size_of_batch, 3, size, size, device=device)
            if size_of_batch >= CHANNELS_LAST_MIN_BATCH:
                batch = batch.contiguous(memory_format=torch.channels_last)
            for dtype in dtypes:
                key = (size_of_batch, precision_name(dtype))
                samples.setdefault(key, []).append(photos_per_s(batch, dtype))
    rows = []
    for (size_of_batch, name), values in sorted(samples.items()):
        fp32 = statistics.median(samples[(size_of_batch, "fp32")])
        median = statistics.median(values)
        rows.append(
            {
                "batch": size_of_batch,
                "precision": name,
                "photos_per_s": median,
                "rounds": values,
                "time_vs_fp32": fp32 / median,
            }
        )
        print(f"batch {size_of_batch:3d} {name:5s} {median:7.1f} photos/s  time x{fp32 / median:.2f} of fp32")
    if args.out is not None:
        write_json(args.out, run_record("bench.precision_batches", argv, device, threads=threads, rows=rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
