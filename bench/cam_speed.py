"""Grad-CAM speed against plain inference and against pytorch-grad-cam, measured in one run.

    python -m bench.cam_speed [--model se_resnet50] [--batch 16] [--size 128] [--rounds 15]

Each round times the three contenders back to back in a rotating order, so load from elsewhere on
the machine falls on all of them alike; the medians over rounds are reported, per image.
"""

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from pytorch_grad_cam import GradCAM

import models
from models.cam import compute_cam, resolve_layer


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="se_resnet50", choices=models.list_models())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = models.create_model(args.model, num_classes=6).eval().to(device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    oracle = GradCAM(model=model, target_layers=[resolve_layer(model, None)])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain_inference() -> None:
        with torch.inference_mode():
            model(images)
        sync()

    def ours_gradcam() -> None:
        compute_cam(model, images, method="gradcam")
        sync()

    def pytorch_grad_cam_gradcam() -> None:
        oracle(input_tensor=images, targets=None)
        sync()

    contenders = [plain_inference, ours_gradcam, pytorch_grad_cam_gradcam]
    for _ in range(args.warmup):
        for fn in contenders:
            fn()
    samples: dict[str, list[float]] = {fn.__name__: [] for fn in contenders}
    for round_index in range(args.rounds):
        shift = round_index % len(contenders)
        for fn in contenders[shift:] + contenders[:shift]:
            samples[fn.__name__].append(time_once(fn) / args.batch)

    median = {name: statistics.median(values) for name, values in samples.items()}
    plain = median["plain_inference"]
    peer = median["pytorch_grad_cam_gradcam"]
    print(
        f"{args.model}, 6 classes, batch {args.batch} at {args.size}x{args.size}, {device.type}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}; "
        f"median of {args.rounds} rounds"
    )
    print("| contender | ms per image | vs plain inference | vs pytorch-grad-cam |")
    print("|---|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value * 1000:.2f} | {value / plain:.2f}x | {value / peer:.2f}x |")
    ours = median["ours_gradcam"]
    print(f"\nours / plain inference = {ours / plain:.3f} (target <= 1.15)")
    print(f"ours / pytorch-grad-cam = {ours / peer:.3f} (target <= 0.33)")


if __name__ == "__main__":
    main()
