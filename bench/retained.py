"""What a site's fine-tuning kept of what the site did not upload: a checkpoint's accuracy on the test
split of its base model's data sets, on the photos of the classes the site sent no photos of and on all.

    python -m bench.retained --checkpoint CHECKPOINT --manifest weights/se_resnet50/manifest.json \\
        --data trashnet=data/trashnet-112.tar.gz --data extra=../shared/data/waste-extra-144.tar.gz \\
        --lacking cardboard glass trash

A photo whose class the checkpoint does not know counts as wrong.
"""

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.precision import native_dtype
from training.data import Loading, Photos
from training.evaluation import load_for_evaluation, predict
from training.split import AnyManifest, manifest_and_root


def retained_accuracy(
    checkpoint: Path, manifest: AnyManifest, root: Path, lacking: Sequence[str]
) -> dict[str, Any]:
    """Accuracy on the manifest's test photos: all of them, and those of the ``lacking`` classes."""
    known = load_checkpoint(checkpoint).spec.class_names
    samples = manifest.select("test")
    names = [manifest.class_names[label] for _, label in samples]
    kept = [(sample, name) for sample, name in zip(samples, names, strict=True) if name in known]
    device = torch.device("cpu")
    # Relabelled to the checkpoint's own classes: a model without some classes still runs on the rest.
    photos = Photos(root, [(path, known.index(name)) for (path, _), name in kept], known)
    loaded = load_for_evaluation(checkpoint, photos, Loading(device, batch_size=64, workers=1))
    dtype = native_dtype(device)
    predictions = predict(loaded.model, loaded.loader, device=device, amp_dtype=dtype)
    right = dict.fromkeys(manifest.class_names, 0)
    for (_, name), correct in zip(kept, predictions.targets == predictions.predictions, strict=True):
        right[name] += int(correct)
    total = {name: names.count(name) for name in manifest.class_names}
    lacking_total = sum(total[name] for name in lacking)
    return {
        "photos": len(samples),
        "accuracy": sum(right.values()) / len(samples),
        "lacking_classes": list(lacking),
        "lacking_photos": lacking_total,
        "accuracy_lacking": sum(right[name] for name in lacking) / max(1, lacking_total),
        "per_class": {name: right[name] / total[name] for name in manifest.class_names if total[name]},
        "precision": "bf16" if dtype is not None else "fp32",
        "unknown_classes": sorted({name for name in names if name not in known}),
        "mean_recall": float(np.mean([right[n] / total[n] for n in manifest.class_names if total[n]])),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="the base model's split manifest")
    parser.add_argument("--data", action="append", default=[], help="where its data sets are (NAME=PATH)")
    parser.add_argument("--lacking", nargs="+", required=True, help="the classes the site sent no photos of")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retained-") as scratch:
        manifest, root = manifest_and_root(args.manifest, args.data, Path(scratch), run_data=Path(scratch))
        for checkpoint in args.checkpoint:
            print(
                json.dumps(
                    {
                        "checkpoint": str(checkpoint),
                        **retained_accuracy(checkpoint, manifest, root, args.lacking),
                    }
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
