"""Weight interpolation between a model and the model fine-tuned from it (WiSE-FT, Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022).

A network fine-tuned from another stays in its basin, so the straight line between the two sets of
weights holds models that trade what the start knew for what the fine-tuning added, at no cost at
inference time. Each ``alpha`` (0: the start, 1: the fine-tuned end) is scored on a split of the
end's run (its validation split: never a held-out source), and the best one is written as a checkpoint
that records where it came from.

    python -m training.interpolate --start weights/se_resnet50/model.pt --end runs/general/best.pt \\
        --manifest runs/general/manifest.json --alphas 0 0.25 0.5 0.75 1 --amp --out runs/general/wise.pt
"""

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.checkpoint import Checkpoint, ModelSpec, load_checkpoint, save_checkpoint
from models.checkpoint import build_model as build_checkpoint_model
from models.files import write_json
from models.precision import amp_dtype
from models.predictor import select_device
from training.data import Loading
from training.evaluation import build_report, eval_loader, predict, remap_labels
from training.run_folder import DATA_DIR, MANIFEST_FILE
from training.split import ALL_SPLITS, DEFAULT_SOURCE, manifest_and_root
from training.weights import interpolate


def check_compatible(start: Checkpoint, end: Checkpoint) -> None:
    """Refuse two checkpoints whose weights do not lie in one space: another architecture, other
    classes (or their order), or tensors of other names or shapes."""
    a, b = start.spec, end.spec
    for what, left, right in (
        ("architecture", (a.arch, a.arch_kwargs), (b.arch, b.arch_kwargs)),
        ("classes", a.class_names, b.class_names),
    ):
        if left != right:
            raise ValueError(f"the two checkpoints differ in {what}: {left} and {right}")
    shapes = {name: tuple(t.shape) for name, t in start.state_dict.items()}
    other = {name: tuple(t.shape) for name, t in end.state_dict.items()}
    if shapes != other:
        differing = sorted(set(shapes.items()) ^ set(other.items()))[:3]
        raise ValueError(f"the two checkpoints' tensors differ, e.g. {differing}")


def best_alpha(scores: Mapping[float, float]) -> float:
    """The alpha with the highest score; on a tie the one nearest the fine-tuned end."""
    return max(scores, key=lambda alpha: (scores[alpha], alpha))


def interpolated_spec(
    end: Checkpoint,
    start: Checkpoint,
    start_path: Path,
    end_path: Path,
    metrics: Mapping[str, Any],
    **record: Any,
) -> ModelSpec:
    """The end's spec with ``metrics`` added, its recipe saying which two checkpoints were mixed and how;
    uncalibrated (the end's temperature was fitted to the end's weights, not to these)."""
    lineage = {
        "start": str(start_path),
        "start_sha256": start.sha256,
        "end": str(end_path),
        "end_sha256": end.sha256,
        **record,
    }
    data = end.spec.to_dict()
    data["recipe"] = {**data["recipe"], "weight_interpolation": lineage}
    data["calibration"] = {}
    data["metrics"] = {**data["metrics"], **metrics}
    return ModelSpec.from_dict(data)


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: every alpha lies in [0, 1]")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", type=Path, required=True, help="the model the end was fine-tuned from")
    parser.add_argument("--end", type=Path, required=True, help="the fine-tuned checkpoint")
    parser.add_argument("--manifest", type=Path, required=True, help=f"the end's run {MANIFEST_FILE}")
    parser.add_argument("--data", action="append", metavar="[NAME=]PATH", help="as for evaluate")
    parser.add_argument("--split", default="val", choices=ALL_SPLITS, help="photos to choose alpha on")
    parser.add_argument("--alphas", type=unit_interval, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--out", type=Path, required=True, help="the chosen checkpoint")
    parser.add_argument("--amp", action="store_true", help="score in bf16 (CPU) or fp16 (CUDA)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device")
    parser.add_argument("--workers", type=int)


def run(args: argparse.Namespace) -> int:

    start, end = load_checkpoint(args.start), load_checkpoint(args.end)
    check_compatible(start, end)
    device = select_device(args.device)
    precision = amp_dtype(device, args.amp)
    model = build_checkpoint_model(end, source=str(args.end)).to(device)
    rows: dict[float, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="trashcam-interpolate-") as scratch:
        manifest, root = manifest_and_root(
            args.manifest, args.data, Path(scratch) / DATA_DIR, run_data=args.manifest.parent / DATA_DIR
        )
        samples = remap_labels(manifest.select(args.split), manifest.class_names, end.spec.class_names)
        loader = eval_loader(end.spec, root, samples, Loading(device, args.batch_size, args.workers))
        sources = manifest.select_sources(args.split, DEFAULT_SOURCE)
        for alpha in args.alphas:
            model.load_state_dict(interpolate(start.state_dict, end.state_dict, alpha))
            report = build_report(
                predict(model, loader, device=device, amp_dtype=precision), end.spec, sources=sources
            )
            rows[alpha] = {
                "accuracy": report["accuracy"],
                "macro_recall": report["macro_avg"]["recall"],
                "per_source": {name: row["accuracy"] for name, row in report["per_source"].items()},
            }
            sys.stdout.write(
                f"alpha {alpha:.2f}: {args.split} accuracy {report['accuracy']:.4f} ("
                + ", ".join(f"{name} {acc:.4f}" for name, acc in rows[alpha]["per_source"].items())
                + ")\n"
            )
    chosen = best_alpha({alpha: row["accuracy"] for alpha, row in rows.items()})
    record = {
        "alpha": chosen,
        "chosen_on": args.split,
        "scores": [{"alpha": alpha, **row} for alpha, row in rows.items()],
    }
    metrics = {f"{args.split}_accuracy": rows[chosen]["accuracy"]}
    spec = interpolated_spec(end, start, args.start, args.end, metrics, **record)
    sha256 = save_checkpoint(args.out, interpolate(start.state_dict, end.state_dict, chosen), spec)
    write_json(args.out.with_suffix(".json"), {**record, "sha256": sha256})
    sys.stdout.write(f"chose alpha {chosen:.2f} ({rows[chosen]['accuracy']:.4f}): {args.out}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``trashcam-train interpolate``, by this module's name."""
    from training.cli import main as command  # the command imports this module

    return command(["interpolate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
