"""Training on a GPU host: the device pipeline's from-scratch run, its timing, and its projection from a
CPU dry run of the same script.

    # the data sets at the network's input size, small enough to copy to a GPU host: photos larger
    # than 112 px squashed to 112 x 112 as evaluation does (JPEG quality 85), smaller ones copied;
    # every file name and manifest.csv kept, so the split there is the split here
    python -m bench.device_training pack --data trashnet=data/trashnet-112.tar.gz \\
        --data extra=$DATA_ROOT/waste-extra-144.tar.gz --data extra2=$DATA_ROOT/waste-extra2-144.tar.gz \\
        --out runs/device-pack
    # here, on the CPU: the same run with a tiny network for 2 epochs, and what it projects for
    # SE-ResNet-50 on a GPU
    python -m bench.device_training run --dry-run --data trashnet=runs/device-pack/trashnet.tar.gz \\
        --data extra=runs/device-pack/extra.tar.gz --data extra2=runs/device-pack/extra2.tar.gz \\
        --out runs/device-dry --record docs/performance/device-training-dry-run.json
    # on the GPU host: 100 epochs of SE-ResNet-50 from scratch
    python -m bench.device_training run --data trashnet=pack/trashnet.tar.gz --data extra=pack/extra.tar.gz \\
        --data extra2=pack/extra2.tar.gz --out runs/device-scratch --record runs/device-scratch/timing.json

The run is ``trashcam-train train`` with the general recipe on the device pipeline
(``training.device_data``: every photo decoded once into a uint8 tensor on the GPU, augmented there,
bf16 autocast where the device has it, channels-last), without the background paste (it runs on PIL
photos in loader processes), ``sd`` and ``er`` held out. The record says how long each phase took:
set-up (split, decoding, the network), the epochs, and the finish (calibration, the similar-photos
index, the feature bank, the test report).

The dry run's projection counts the network's floating-point operations per photo (forward and
backward, ``torch.utils.flop_counter``) over the epochs' photos and divides by a sustained rate that
is an assumption (``--assumed-tflops``), not a measurement; the set-up and finish are this machine's
measured times with the tiny network, so an upper bound for a host with more cores. It also says what
rate the run needs to fit ``--budget-minutes``.
"""

import argparse
import io
import logging
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bench.record import run_record, write_json
from models import create_model
from models.files import read_json
from models.predictor import select_device
from training.config import make_config
from training.data import find_class_root, resolve_source
from training.engine import train
from training.progress import Progress
from training.run_folder import RunFolder
from training.split import SOURCE_TAGS_FILE, load_manifest, parse_data_sets

MODULE = "bench.device_training"
#: The held-out sites: no general model trains or chooses a checkpoint on them.
HOLDOUT = ("sd", "er")
DRY_RUN_MODEL, DRY_RUN_KWARGS = "simple_cnn", {"width": 8}


def pack_data_set(
    source: Path, name: str, size: int, quality: int, out: Path, scratch: Path
) -> dict[str, Any]:
    """``out/NAME.tar.gz``: the data set's photos squashed to ``size`` px (those no larger copied), its
    layout and manifest.csv kept."""
    root = find_class_root(resolve_source(source, scratch / name))
    target = out / f"{name}.tar.gz"
    photos = 0
    # Compressed for the tar headers and padding, a third of the bytes of 5 kB photos.
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            arcname = f"{name}/{path.relative_to(root).as_posix()}"
            if path.name == SOURCE_TAGS_FILE:
                archive.add(path, arcname)
                continue
            try:
                with Image.open(path) as image:
                    kept = max(image.size) <= size
                    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            except OSError:
                continue  # not a photo; the split skips what does not open anyway
            if kept:  # no larger than what evaluation resizes it to: copied, not encoded again
                archive.add(path, arcname)
                photos += 1
                continue
            buffer = io.BytesIO()
            kind = Image.registered_extensions().get(path.suffix.lower(), "JPEG")
            rgb.save(buffer, format=kind, quality=quality)
            info = tarfile.TarInfo(arcname)
            info.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(info, buffer)
            photos += 1
    return {"name": name, "photos": photos, "bytes": target.stat().st_size, "path": str(target)}


class PhaseClock:
    """When the run first trained a step and last finished an epoch, from its progress reports."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_step: float | None = None
        self.last_epoch: float | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.perf_counter()
        if progress.phase == "train" and self.first_step is None:
            self.first_step = now
        if progress.phase == "epoch":
            self.last_epoch = now


def training_flops(model: str, kwargs: dict[str, Any], num_classes: int, size: int) -> dict[str, float]:
    """Floating-point operations per photo of one forward pass, and of a training step's forward and
    backward passes, as ``torch.utils.flop_counter`` counts them (matrix products and convolutions)."""
    network = create_model(model, num_classes=num_classes, **kwargs)
    images = torch.randn(2, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network.eval()(images)
    forward = counter.get_total_flops() / len(images)
    with FlopCounterMode(display=False) as counter:
        network.train()(images).sum().backward()
    return {"forward": forward, "train": counter.get_total_flops() / len(images)}


def cmd_pack(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="device-pack-") as scratch:
        packed = [
            pack_data_set(Path(source), name, args.size, args.quality, args.out, Path(scratch))
            for name, source in parse_data_sets(args.data)
        ]
    for item in packed:
        print(f"{item['path']}: {item['photos']} photos, {item['bytes'] / 2**20:.1f} MiB")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    model, kwargs = (DRY_RUN_MODEL, DRY_RUN_KWARGS) if args.dry_run else (args.model, {})
    epochs = args.epochs if args.epochs is not None else (2 if args.dry_run else 100)
    config = make_config(
        "general",
        data=tuple(args.data),
        out=str(args.out),
        model=model,
        model_kwargs=kwargs,
        pipeline="device",
        paste_background=0.0,
        holdout_sources=HOLDOUT,
        epochs=epochs,
        warmup_epochs=min(args.warmup_epochs, epochs - 1),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device="cpu" if args.dry_run else args.device,
        workers=args.workers,
    )
    clock = PhaseClock()
    result = train(config, callback=clock)
    finished = time.perf_counter()
    folder = RunFolder(args.out)
    history = read_json(folder.history)
    assert clock.first_step is not None
    assert clock.last_epoch is not None
    phases = {
        "setup_s": clock.first_step - clock.started,
        "epochs_s": clock.last_epoch - clock.first_step,
        "finish_s": finished - clock.last_epoch,
        "total_s": finished - clock.started,
        "epoch_s": [record["seconds"] for record in history],
    }
    record = run_record(
        MODULE,
        args.argv,
        select_device(config.device),
        model=model,
        epochs=result.epochs_completed,
        batch_size=config.batch_size,
        best_val_accuracy=result.best_val_accuracy,
        test_accuracy=result.test_accuracy,
        phases=phases,
    )
    if args.dry_run:
        record["projection"] = project(args, folder, phases)
    print_record(record)
    if args.record is not None:
        write_json(args.record, record)
    return 0


def project(args: argparse.Namespace, folder: RunFolder, phases: dict[str, Any]) -> dict[str, Any]:
    """The run's time on a GPU for ``args.model`` over ``args.project_epochs``, at an assumed rate."""
    manifest = load_manifest(folder.manifest)
    sizes = {split: len(manifest.select(split)) for split in ("train", "val", "test")}
    size = read_json(folder.config)["input_size"]
    flops = training_flops(args.model, {}, len(manifest.class_names), size)
    epochs = args.project_epochs
    total = epochs * (sizes["train"] * flops["train"] + sizes["val"] * flops["forward"])
    rate = args.assumed_tflops * 1e12
    model_s = total / rate
    projected = phases["setup_s"] + model_s + phases["finish_s"]
    budget = args.budget_minutes * 60
    left = budget - phases["setup_s"] - phases["finish_s"]
    return {
        "model": args.model,
        "epochs": epochs,
        "photos": sizes,
        "flops_per_photo": flops,
        "assumed_tflops": args.assumed_tflops,
        "model_s_at_assumed_rate": model_s,
        "setup_and_finish_s_measured_here": phases["setup_s"] + phases["finish_s"],
        "projected_s": projected,
        "budget_s": budget,
        "tflops_needed_for_budget": total / left / 1e12 if left > 0 else None,
        "train_photos_per_s_needed_for_budget": epochs * sizes["train"] / left if left > 0 else None,
    }


def print_record(record: dict[str, Any]) -> None:
    phases = record["phases"]
    print(
        f"{record['model']}: {record['epochs']} epochs, set-up {phases['setup_s']:.1f}s, epochs "
        f"{phases['epochs_s']:.1f}s, finish {phases['finish_s']:.1f}s, total {phases['total_s']:.1f}s; "
        f"best val {record['best_val_accuracy']:.4f}, test {record['test_accuracy']}"
    )
    projection = record.get("projection")
    if projection is not None:
        print(
            f"projected for {projection['model']} x {projection['epochs']} epochs at an assumed "
            f"{projection['assumed_tflops']:.0f} TFLOP/s: {projection['projected_s']:.0f}s "
            f"(the network {projection['model_s_at_assumed_rate']:.0f}s); within "
            f"{projection['budget_s'] / 60:.0f} minutes it needs "
            f"{projection['tflops_needed_for_budget']:.1f} TFLOP/s, "
            f"{projection['train_photos_per_s_needed_for_budget']:.0f} training photos/s"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="the data sets at the input size, to copy to a GPU host")
    pack.add_argument("--data", action="append", required=True, help="NAME=PATH, once per data set")
    pack.add_argument("--size", type=int, default=112)
    pack.add_argument("--quality", type=int, default=85, help="JPEG quality of the photos encoded again")
    pack.add_argument("--out", type=Path, required=True)
    run = commands.add_parser("run", help="the from-scratch run on the device pipeline")
    run.add_argument("--data", action="append", required=True, help="NAME=PATH, once per data set")
    run.add_argument("--out", type=Path, required=True, help="the run folder")
    run.add_argument("--record", type=Path, help="where to write the timing record (JSON)")
    run.add_argument("--model", default="se_resnet50")
    run.add_argument("--epochs", type=int, help="default: 100 (2 with --dry-run)")
    run.add_argument("--warmup-epochs", type=int, default=5)
    run.add_argument("--batch-size", type=int, default=256)
    run.add_argument("--lr", type=float, default=2e-3, help="the general recipe's 1e-3 at batch 128, scaled")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", help="default: cuda if available, else cpu")
    run.add_argument("--workers", type=int, help="decoding processes (default: sized to the CPUs)")
    run.add_argument("--dry-run", action="store_true", help=f"{DRY_RUN_MODEL} on the CPU, and a projection")
    run.add_argument("--project-epochs", type=int, default=100)
    run.add_argument("--assumed-tflops", type=float, default=150.0)
    run.add_argument("--budget-minutes", type=float, default=8.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.argv = argv
    return cmd_pack(args) if args.command == "pack" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
