"""Explanations of trained models on a split: faithfulness scores and side-by-side Grad-CAM figures.

python -m training.explanations faithfulness --checkpoint runs/se/best.pt --manifest runs/se/manifest.json
python -m training.explanations figure --manifest runs/se/manifest.json --out docs/figures/gradcam.png \\
    --checkpoint ResNet-50=runs/r50/best.pt --checkpoint SE-ResNet-50=runs/se/best.pt
"""

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display
import numpy as np
import torch
from matplotlib import pyplot as plt
from PIL import Image

from models.cam import compute_cam, list_cam_methods
from models.cam.faithfulness import faithfulness
from models.cam.overlay import overlay_heatmap
from models.checkpoint import CheckpointError, build_model, load_checkpoint
from models.precision import amp_dtype, autocast, precision_name
from models.predictor import select_device
from models.transforms import build_eval_transform
from training.archive import ArchiveError
from training.data import DataError, Loading
from training.evaluation import eval_loader, remap_labels
from training.run_folder import DATA_DIR
from training.split import AnyManifest, manifest_and_root

logger = logging.getLogger(__name__)


def evaluate_faithfulness(
    checkpoint_path: Path,
    manifest: AnyManifest,
    root: Path,
    *,
    split: str = "test",
    method: str = "gradcam",
    steps: int = 32,
    batch_size: int = 32,
    device: torch.device,
    amp: bool = False,
) -> dict[str, Any]:
    """Mean faithfulness of ``method``'s heatmaps for the predicted class over a split.

    With ``amp`` the many forward passes that score the heatmaps run under bf16/fp16 autocast (where
    ``models.precision.amp_dtype`` picks one); the heatmaps themselves are always computed in fp32.
    """
    precision = amp_dtype(device, amp)
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_model(checkpoint, source=str(checkpoint_path)).to(device).requires_grad_(False)
    samples = remap_labels(manifest.select(split), manifest.class_names, checkpoint.spec.class_names)
    loader = eval_loader(checkpoint.spec, root, samples, Loading(device, batch_size))
    totals = {"drop": 0.0, "increase": 0.0, "deletion_auc": 0.0, "insertion_auc": 0.0}
    count = 0
    for images, _ in loader:
        images = images.to(device)
        heatmaps, _, targets = compute_cam(model, images, method=method)
        with autocast(device, precision):
            scores = faithfulness(model, images, heatmaps, targets, steps=steps)
        totals["drop"] += float(scores.drop.sum())
        totals["increase"] += float(scores.increase.sum())
        totals["deletion_auc"] += float(scores.deletion_auc.sum())
        totals["insertion_auc"] += float(scores.insertion_auc.sum())
        count += len(images)
        logger.info("%s: %d/%d images", checkpoint_path, count, len(samples))
    return {
        "checkpoint": str(checkpoint_path),
        "arch": checkpoint.spec.arch,
        "method": method,
        "split": split,
        "images": count,
        "deletion_steps": steps,
        "precision": precision_name(precision),
        "average_drop_pct": 100 * totals["drop"] / count,
        "increase_in_confidence_pct": 100 * totals["increase"] / count,
        "deletion_auc": totals["deletion_auc"] / count,
        "insertion_auc": totals["insertion_auc"] / count,
    }


def pick_images(
    manifest: AnyManifest, *, split: str, per_class: int, sources: Sequence[str] = ()
) -> list[tuple[str, int]]:
    """``per_class`` images of each class of the split (``+`` joins splits: ``test+holdout``), in
    manifest order (deterministic). With ``sources``, only photos of those sources, taken from each in
    turn, so that a class shows as many sources as it can."""
    candidates: list[tuple[tuple[str, int], str]] = []
    for name in split.split("+"):
        candidates += zip(manifest.select(name), manifest.select_sources(name, ""), strict=True)
    chosen: list[tuple[str, int]] = []
    for label in range(len(manifest.class_names)):
        of_class = [(sample, source) for sample, source in candidates if sample[1] == label]
        if not sources:
            chosen += [sample for sample, _ in of_class][:per_class]
            continue
        queues = [[sample for sample, tag in of_class if tag == source] for source in sources]
        picked: list[tuple[str, int]] = []
        while len(picked) < per_class and any(queues):
            for queue in queues:
                if queue and len(picked) < per_class:
                    picked.append(queue.pop(0))
        chosen += picked
    return chosen


def gradcam_figure(
    checkpoints: Sequence[tuple[str, Path]],
    manifest: AnyManifest,
    root: Path,
    out: Path,
    *,
    split: str = "test",
    per_class: int = 2,
    sources: Sequence[str] = (),
    method: str = "gradcam",
    device: torch.device,
) -> None:
    """Columns: the chosen images; rows: the photo, then each model's heatmap for its prediction."""
    samples = pick_images(manifest, split=split, per_class=per_class, sources=sources)
    photos = [Image.open(root / path).convert("RGB") for path, _ in samples]
    figure, axes = plt.subplots(
        len(checkpoints) + 1,
        len(samples),
        figsize=(1.6 * len(samples), 1.8 * (len(checkpoints) + 1)),
        squeeze=False,
    )
    for column, (photo, (_, label)) in enumerate(zip(photos, samples, strict=True)):
        axes[0, column].imshow(photo)
        axes[0, column].set_title(manifest.class_names[label], fontsize=8)
    for row, (name, path) in enumerate(checkpoints, start=1):
        checkpoint = load_checkpoint(path)
        model = build_model(checkpoint, source=str(path)).to(device).requires_grad_(False)
        transform = build_eval_transform(checkpoint.spec)
        batch = torch.stack([transform(photo) for photo in photos]).to(device)
        heatmaps, logits, targets = compute_cam(model, batch, method=method)
        probabilities = logits.float().softmax(dim=1)
        for column, photo in enumerate(photos):
            target = int(targets[column])
            overlay = overlay_heatmap(np.asarray(photo), heatmaps[column].cpu().numpy(), alpha=0.5)
            axes[row, column].imshow(overlay)
            correct = checkpoint.spec.class_names[target] == manifest.class_names[samples[column][1]]
            axes[row, column].set_title(
                f"{checkpoint.spec.class_names[target]} {probabilities[column, target]:.2f}",
                fontsize=7,
                color="black" if correct else "red",
            )
        axes[row, 0].set_ylabel(name, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(
        f"{method} on {split} images (title: predicted class and probability; red: wrong)", fontsize=9
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="explanation", required=True)
    scores = commands.add_parser(
        "faithfulness", help="average drop, increase in confidence, deletion/insertion AUC"
    )
    scores.add_argument("--checkpoint", type=Path, required=True)
    scores.add_argument("--steps", type=int, default=32)
    scores.add_argument("--out", type=Path, help="write the scores here as JSON")
    scores.add_argument(
        "--amp", action="store_true", help="score under bf16 autocast (heatmaps stay fp32); faster"
    )
    figure = commands.add_parser("figure", help="a grid of heatmaps: images as columns, models as rows")
    figure.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH")
    figure.add_argument("--per-class", type=int, default=2)
    figure.add_argument(
        "--sources", nargs="+", default=(), metavar="SOURCE", help="only photos of these sources, in turn"
    )
    figure.add_argument("--out", type=Path, required=True)
    for command in (scores, figure):
        command.add_argument("--manifest", type=Path, required=True)
        command.add_argument(
            "--data",
            action="append",
            metavar="[NAME=]PATH",
            help="where the manifest's data set is now (default: where it was when split); "
            "for a mixed run, NAME=PATH per data set that moved",
        )
        command.add_argument("--split", default="test", help="a split; for figures, splits joined by '+'")
        command.add_argument("--method", default="gradcam", choices=list_cam_methods())
        command.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="trashcam-explain-") as scratch:
            manifest, root = manifest_and_root(
                args.manifest, args.data, Path(scratch) / DATA_DIR, run_data=args.manifest.parent / DATA_DIR
            )
            _run(args, manifest, root, select_device(args.device))
    except (ArchiveError, CheckpointError, DataError, OSError, ValueError) as error:
        logger.error("%s", error)
        return 2
    return 0


def _run(args: argparse.Namespace, manifest: AnyManifest, root: Path, device: torch.device) -> None:
    if args.explanation == "faithfulness":
        result = evaluate_faithfulness(
            args.checkpoint,
            manifest,
            root,
            split=args.split,
            method=args.method,
            steps=args.steps,
            device=device,
            amp=args.amp,
        )
        text = json.dumps(result, indent=2)
        if args.out is not None:
            args.out.write_text(text + "\n")
        sys.stdout.write(text + "\n")
    else:
        named = [tuple(item.split("=", 1)) for item in args.checkpoint]
        gradcam_figure(
            [(name, Path(path)) for name, path in named],
            manifest,
            root,
            args.out,
            split=args.split,
            per_class=args.per_class,
            sources=args.sources,
            method=args.method,
            device=device,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``trashcam-train explanations``, by this module's name."""
    from training.cli import main as command  # the command imports this module

    return command(["explanations", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
