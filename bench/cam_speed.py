"""CAM cost against plain inference and against pytorch-grad-cam, for every method both have, measured
in one run.

    python -m bench.cam_speed --checkpoint weights/se_resnet50/model.pt --batches 1 16 64 --rounds 5 \\
        --out docs/performance/cam-speed.json

The checkpoint's network at its input size (random weights of ``--model`` without a checkpoint), fp32,
on the GPU when there is one. For each batch size, each round times plain inference and both
implementations of every method back to back, in a rotating order, so load from elsewhere on the
machine falls on all of them alike; the medians over rounds are reported, per image. Score-CAM runs one
forward pass per channel (2,048 for the ResNet-50s): it is timed only at the batch sizes of
``--scorecam-batches``, for one round.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)

import models
from models.cam import compute_cam, resolve_layer
from models.checkpoint import build_model, load_checkpoint

#: Our method names and pytorch-grad-cam's class for each.
THEIRS: dict[str, Any] = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
}


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="a trained network (its input size too)")
    parser.add_argument("--model", default="se_resnet50", choices=models.list_models())
    parser.add_argument("--size", type=int, default=112, help="input size without --checkpoint")
    parser.add_argument("--methods", nargs="+", default=list(THEIRS), choices=list(THEIRS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--scorecam-batches", type=int, nargs="*", default=[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint is not None:
        checkpoint = load_checkpoint(args.checkpoint)
        model, size, described = build_model(checkpoint), checkpoint.spec.input_size, str(args.checkpoint)
    else:
        model, size = models.create_model(args.model, num_classes=6), args.size
        described = f"{args.model}, random weights"
    model = model.eval().to(device)
    layer = resolve_layer(model, None)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows: list[dict[str, Any]] = []
    for batch in args.batches:
        images = torch.randn(batch, 3, size, size, device=device)
        methods = [m for m in args.methods if m != "scorecam" or batch in args.scorecam_batches]
        contenders: dict[str, Callable[[], object]] = {}

        def plain(images: torch.Tensor = images) -> None:
            with torch.inference_mode():
                model(images)
            sync()

        contenders["plain inference"] = plain
        for method in methods:

            def ours(method: str = method, images: torch.Tensor = images) -> None:
                compute_cam(model, images, method=method)
                sync()

            def peer(method: str = method, images: torch.Tensor = images) -> None:
                # pytorch-grad-cam hooks the layer when built and until released: left in place, its
                # hooks would run (and copy the activation) in every other contender's forward pass.
                with THEIRS[method](model=model, target_layers=[layer]) as theirs:
                    theirs(input_tensor=images, targets=None)
                sync()

            contenders[f"ours {method}"] = ours
            contenders[f"pytorch-grad-cam {method}"] = peer

        rounds = {name: args.rounds for name in contenders}
        for name in contenders:
            if name.endswith("scorecam"):
                rounds[name] = 1
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for _ in range(args.warmup):
            for name in names:
                if not name.endswith("scorecam"):
                    contenders[name]()
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                if len(samples[name]) < rounds[name]:
                    samples[name].append(time_once(contenders[name]) / batch)
        median = {name: statistics.median(values) for name, values in samples.items()}
        plain_s = median["plain inference"]
        for method in methods:
            ours_s, theirs_s = median[f"ours {method}"], median[f"pytorch-grad-cam {method}"]
            rows.append(
                {
                    "batch": batch,
                    "method": method,
                    "rounds": rounds[f"ours {method}"],
                    "plain_ms_per_image": 1000 * plain_s,
                    "ours_ms_per_image": 1000 * ours_s,
                    "theirs_ms_per_image": 1000 * theirs_s,
                    "ours_vs_plain": ours_s / plain_s,
                    "ours_vs_theirs": ours_s / theirs_s,
                }
            )
            print(rows[-1], flush=True)

    threads = torch.get_num_threads()
    print(
        f"\n{described}, batch x 3 x {size} x {size}, fp32, {device.type}, {threads} threads, "
        f"torch {torch.__version__}, {platform.machine()}; medians of {args.rounds} rounds\n"
    )
    print("| batch | method | ms/image: plain, ours, pytorch-grad-cam | ours / plain | ours / theirs |")
    print("|---|---|---|---|---|")
    for row in rows:
        times = ", ".join(
            f"{row[key]:.2f}" for key in ("plain_ms_per_image", "ours_ms_per_image", "theirs_ms_per_image")
        )
        print(
            f"| {row['batch']} | {row['method']} | {times} "
            f"| {row['ours_vs_plain']:.2f}x | {row['ours_vs_theirs']:.2f}x |"
        )
    gradcam = [row["ours_vs_plain"] for row in rows if row["method"] == "gradcam"]
    if gradcam:
        print(f"\ngradcam / plain inference, worst batch: {max(gradcam):.3f} (target <= 1.15)")
    worst = max(row["ours_vs_theirs"] for row in rows)
    print(f"ours / pytorch-grad-cam, worst method: {worst:.3f} (target <= 1)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "python -m bench.cam_speed " + " ".join(sys.argv[1:] if argv is None else argv),
            "model": described,
            "device": device.type,
            "threads": torch.get_num_threads(),
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
