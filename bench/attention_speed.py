"""Training and inference speed of ResNet-50 without attention, with SE in every block, and with the
paper's shared SE (one module per stage), measured in one run.

    python -m bench.attention_speed [--batch 32] [--size 128] [--rounds 5] [--precision bf16]

Each round runs one training step and one inference pass of every model in a rotating order, so load
from elsewhere falls on all of them alike; the medians over rounds are reported with ratios to
ResNet-50.
"""

import argparse
import statistics
import time

import torch

import models
from models.precision import DTYPES
from training.engine import train_step

MODELS = ("resnet50", "se_resnet50", "shared_se_resnet50")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", choices=list(DTYPES), default="bf16")
    args = parser.parse_args()

    torch.manual_seed(0)
    amp = DTYPES[args.precision]
    networks = {name: models.create_model(name, num_classes=6) for name in MODELS}
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=1e-3) for name, net in networks.items()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 6, (args.batch,))

    def train(name: str) -> None:
        networks[name].train()
        train_step(
            networks[name],
            images,
            labels,
            optimizer=optimizers[name],
            scaler=scaler,
            criterion=criterion,
            amp=amp,
        )

    def infer(name: str) -> None:
        networks[name].eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            networks[name](images)

    timings: dict[tuple[str, str], list[float]] = {
        (kind, name): [] for kind in ("train", "infer") for name in MODELS
    }
    for round_index in range(args.rounds + 1):  # the first round warms up and is not counted
        order = MODELS[round_index % 3 :] + MODELS[: round_index % 3]
        for name in order:
            for kind, run in (("train", train), ("infer", infer)):
                started = time.perf_counter()
                run(name)
                if round_index > 0:
                    timings[(kind, name)].append(time.perf_counter() - started)

    print(
        f"batch {args.batch} at {args.size}x{args.size}, {args.precision}, cpu, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    print(
        "| model | parameters (6 classes) | train step (s) | vs resnet50 "
        "| inference (ms/image) | vs resnet50 |"
    )
    print("|---|---|---|---|---|---|")
    base_train = statistics.median(timings[("train", "resnet50")])
    base_infer = statistics.median(timings[("infer", "resnet50")])
    for name in MODELS:
        train_s = statistics.median(timings[("train", name)])
        infer_s = statistics.median(timings[("infer", name)])
        params = sum(p.numel() for p in networks[name].parameters())
        print(
            f"| {name} | {params:,} | {train_s:.3f} | {train_s / base_train:.2f}x "
            f"| {infer_s / args.batch * 1000:.2f} | {infer_s / base_infer:.2f}x |"
        )


if __name__ == "__main__":
    main()
