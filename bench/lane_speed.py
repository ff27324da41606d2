"""Whether batches run faster one at a time on every core or side by side in lanes of their own.

    python -m bench.lane_speed --checkpoint weights/se_resnet50/model.pt

For each batch size, in the precision and layout the service runs it in (``models.precision``), with
batch norms folded, in interleaved rounds, photos/s of:

- ``main``: one batch at a time on the main thread, on torch's default threads (every core);
- ``one lane``: one batch at a time on a thread of its own with every core's threads, as the service
  ran its model before it had lanes;
- ``lanes``: the service's plan (``app.lanes.plan_lanes``): that many threads, each running its own
  batches on its share of the cores, all at once.

The ratio printed is lanes against one lane. This is what ``app.lanes`` rests on.
"""

import argparse
import functools
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from app.lanes import plan_lanes
from bench.record import run_record, write_json
from models.checkpoint import build_model, load_checkpoint
from models.fusion import fold_batch_norms
from models.precision import choose_precision, precision_name
from models.predictor import select_device


def timed(run: Callable[[], int], seconds: float) -> float:
    """Photos/s of calling ``run`` (which returns the photos it did) for about ``seconds``."""
    run()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += run()
    return done / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = select_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint)
    model: nn.Module = build_model(checkpoint).eval().to(device)
    fold_batch_norms(model)
    precision = choose_precision(device)
    plan = plan_lanes(device)
    every_core = torch.get_num_threads()
    size = checkpoint.spec.input_size

    def forward(batch: torch.Tensor) -> int:
        with torch.inference_mode(), precision.autocast(device, batch.shape[0]):
            model(precision.inputs(batch))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return batch.shape[0]

    one_lane = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(every_core,))
    lanes = ThreadPoolExecutor(plan.lanes, initializer=torch.set_num_threads, initargs=(plan.threads,))

    def side_by_side(batch: torch.Tensor, seconds: float) -> float:
        start = threading.Barrier(plan.lanes)

        def run() -> float:
            start.wait()
            return timed(lambda: forward(batch), seconds)

        return sum(future.result() for future in [lanes.submit(run) for _ in range(plan.lanes)])

    samples: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for size_of_batch in args.batches:
            batch = torch.randn(size_of_batch, 3, size, size, device=device)
            run = functools.partial(forward, batch)
            measured = {
                "main": timed(run, args.seconds),
                "one lane": one_lane.submit(timed, run, args.seconds).result(),
                "lanes": side_by_side(batch, args.seconds),
            }
            for name, value in measured.items():
                samples.setdefault((size_of_batch, name), []).append(value)
    rows = []
    for size_of_batch in args.batches:
        names = ("main", "one lane", "lanes")
        medians = {name: statistics.median(samples[(size_of_batch, name)]) for name in names}
        row = {
            "batch": size_of_batch,
            "precision": precision_name(precision.dtype_for(device, size_of_batch)),
            **{f"{name} photos/s": value for name, value in medians.items()},
            "rounds": {name: samples[(size_of_batch, name)] for name in medians},
            "lanes / one lane": medians["lanes"] / medians["one lane"],
        }
        rows.append(row)
        print(
            f"batch {size_of_batch:3d}: main {medians['main']:6.1f}  one lane x{every_core} threads "
            f"{medians['one lane']:6.1f}  {plan.name} {medians['lanes']:6.1f} photos/s  "
            f"lanes/one lane x{row['lanes / one lane']:.2f}"
        )
    one_lane.shutdown()
    lanes.shutdown()
    if args.out is not None:
        record = run_record("bench.lane_speed", argv, device, plan=plan.name, rows=rows)
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
