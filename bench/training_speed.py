"""Training speed: our loop against a plain fp32 eager loop, same model, photos and batch, in one run.

    python -m bench.training_speed --data data/trashnet-112.tar.gz --steps 10 --rounds 2 \\
        --out docs/performance/training-speed.json

- ours: the training run's own objects (``training.engine``: its loader with the recipe's augmentation,
  sampler and workers, its optimizer, loss, batch mixing and precision), each batch through the
  step an epoch takes (``train_batch``);
- ours, device pipeline: the same run with ``pipeline="device"`` (``training.device_data``: the photos
  decoded once, batches augmented in this process, channels-last), with ``--device-pipeline``;
- plain: the loop one writes first: ``transforms.v2`` random-resized crops and flips, a ``DataLoader``
  with as many workers, AdamW and cross-entropy in fp32, no autocast.

Each round runs ``--steps`` timed steps of each (after 2 untimed ones), the two in turn. Reported:
photos/s, and the share of step time spent waiting for the next batch from the loader. The peak RSS of
this process and of the loaders' worker processes is reported too, as the memory a training worker
needs.
"""

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from models import create_model
from training.config import make_config
from training.data import Batches, default_workers
from training.engine import _Run, split_data

WARMUP = 2


class PlainDataset(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, root: Path, samples: Sequence[tuple[str, int]], size: int) -> None:
        self.root, self.samples = root, list(samples)
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(self.root / path) as image:
            return self.transform(image.convert("RGB")), label


def endless(loader: Batches) -> Iterator[Any]:
    while True:
        yield from loader


def time_steps(
    batches: Iterator[Any], step: Callable[[torch.Tensor, torch.Tensor], None], steps: int
) -> dict[str, float]:
    """Photos/s and the share of time spent in ``next(batches)`` over ``steps`` steps after warm-up."""
    waited = stepped = 0.0
    photos = 0
    for index in range(WARMUP + steps):
        started = time.perf_counter()
        images, labels = next(batches)
        fetched = time.perf_counter()
        step(images, labels)
        if index >= WARMUP:
            waited += fetched - started
            stepped += time.perf_counter() - fetched
            photos += len(labels)
    return {"photos_per_s": photos / (waited + stepped), "data_wait_share": waited / (waited + stepped)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="a data set (folder or archive)")
    parser.add_argument("--model", default="se_resnet50")
    parser.add_argument("--recipe", default="strong")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device-pipeline", action="store_true", help="also time the device pipeline")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        config = make_config(
            args.recipe,
            data=args.data,
            out=str(Path(scratch) / "run"),
            model=args.model,
            batch_size=args.batch_size,
            input_size=args.input_size,
            amp=True,
        )
        manifest, root = split_data(config, Path(scratch) / "data")
        ours = _Run(config, manifest, root, None)
        ours.model.train()

        def our_step(images: torch.Tensor, labels: torch.Tensor) -> None:
            ours.train_batch(images, labels)

        torch.manual_seed(0)
        plain_model: nn.Module = create_model(args.model, num_classes=len(manifest.class_names)).train()
        plain_optimizer = torch.optim.AdamW(plain_model.parameters(), lr=1e-3)
        plain_loss = nn.CrossEntropyLoss()
        workers = config.workers if config.workers is not None else default_workers(ours.device)
        plain_loader = DataLoader(
            PlainDataset(root, manifest.select("train"), args.input_size),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=True,
        )

        def plain_step(images: torch.Tensor, labels: torch.Tensor) -> None:
            loss = plain_loss(plain_model(images), labels)
            plain_optimizer.zero_grad()
            loss.backward()
            plain_optimizer.step()

        contenders = {
            "ours": (endless(ours.train_loader), our_step),
        }
        if args.device_pipeline:
            on_device = _Run(config.replace(pipeline="device"), manifest, root, None)
            on_device.model.train()

            def device_step(images: torch.Tensor, labels: torch.Tensor) -> None:
                on_device.train_batch(images, labels)

            contenders["ours, device pipeline"] = (endless(on_device.train_loader), device_step)
        contenders |= {
            "plain fp32 eager": (endless(plain_loader), plain_step),
        }
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        names = list(contenders)
        peak_children = 0.0
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                batches, step = contenders[name]
                samples[name].append(time_steps(batches, step, args.steps))
                print(name, samples[name][-1], flush=True)
                children = psutil.Process().children(recursive=True)
                peak_children = max(peak_children, sum(c.memory_info().rss for c in children) / 2**20)

    result: dict[str, Any] = {
        "command": "python -m bench.training_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "recipe": args.recipe,
        "batch_size": args.batch_size,
        "input_size": args.input_size,
        "device": str(ours.device),
        "precision": "fp32" if ours.amp is None else str(ours.amp).removeprefix("torch."),
        "workers": workers,
        "threads": torch.get_num_threads(),
        "results": {
            name: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            for name, rows in samples.items()
        },
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loader_workers_rss_mb": peak_children,
    }
    results = result["results"]
    result["ours_vs_plain"] = results["ours"]["photos_per_s"] / results["plain fp32 eager"]["photos_per_s"]
    if args.device_pipeline:
        device_rate = results["ours, device pipeline"]["photos_per_s"]
        result["device_pipeline_vs_ours"] = device_rate / results["ours"]["photos_per_s"]
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
