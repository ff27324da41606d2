"""Serving a site's model beside its base, each photo answered by the one whose training photos it looks
like (``models.ood.FeatureBank.routes_to_base``): which photos the base answers, and what the pair then
gets right on the site's other photos, on the base's own test photos and on a source neither saw.

    python -m bench.retention_ablation --extra ../shared/data/waste-extra-144.tar.gz --seed 1 \\
        --variants recipe-nohold --out runs/retention-seed1
    python -m bench.routing_study --run runs/retention-seed1 --variants recipe-nohold \\
        --extra ../shared/data/waste-extra-144.tar.gz --unseen ../shared/data/waste-extra2-144.tar.gz

The site model's feature bank holds its own photos first, then a sample of its base's; a model trained
before it served beside its base gets its routing margin chosen here as training chooses it, on the
base's validation photos. One JSON line per variant.
"""

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.operator_story import read_source
from core.settings import PROJECT_ROOT, SHIPPED_MODEL_DIR
from models.checkpoint import load_checkpoint
from models.ood import OOD_FILE, FeatureBank
from models.precision import choose_precision
from models.store import CHECKPOINT_FILE
from training.data import Loading, Photos, Sample
from training.features import Features, extract_features
from training.ood import choose_route_margin
from training.run_folder import RunFolder
from training.split import manifest_and_root

BASE_DIR = SHIPPED_MODEL_DIR


def folder_samples(folder: Path, classes: Sequence[str]) -> list[Sample]:
    """The photos under ``folder/CLASS/`` as samples labelled in ``classes`` order."""
    return [
        (f"{label}/{path.name}", classes.index(label))
        for label in sorted(p.name for p in folder.iterdir() if p.is_dir())
        for path in sorted((folder / label).iterdir())
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="a bench.retention_ablation output folder")
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--extra", type=Path, required=True, help="waste-extra-144.tar.gz")
    parser.add_argument("--trashnet", type=Path, default=PROJECT_ROOT / "data" / "trashnet-112.tar.gz")
    parser.add_argument("--unseen", type=Path, help="waste-extra2-144.tar.gz: its er photos, unlike both")
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    amp = choose_precision(device).dtype
    base_path = BASE_DIR / CHECKPOINT_FILE
    classes = list(load_checkpoint(base_path).spec.class_names)
    site_classes = sorted(read_source(args.extra, "sd"))
    lacking = [name for name in classes if name not in site_classes]

    with tempfile.TemporaryDirectory(prefix="routing-") as scratch:
        data = [f"trashnet={args.trashnet}", f"extra={args.extra}"]
        manifest, root = manifest_and_root(
            RunFolder(BASE_DIR).manifest, data, Path(scratch), run_data=Path(scratch)
        )
        folders = {"site": args.run / "site", "sd_test": args.run / "test"}
        sets: dict[str, tuple[Path, list[Sample]]] = {
            name: (folder, folder_samples(folder, classes)) for name, folder in folders.items()
        }
        test = manifest.select("test")
        sets["base_test"] = (
            root,
            [(path, classes.index(manifest.class_names[label])) for path, label in test],
        )
        if args.unseen is not None:
            unseen = Path(scratch) / "er"
            for label, items in read_source(args.unseen, "er").items():
                (unseen / label).mkdir(parents=True, exist_ok=True)
                for name, photo in items:
                    (unseen / label / name).write_bytes(photo)
            sets["er"] = (unseen, folder_samples(unseen, classes))

        def extracted(checkpoint: Path, folder: Path, samples: list[Sample]) -> Features:
            return extract_features(
                checkpoint,
                Photos(folder, samples, classes),
                Loading(device, batch_size=64, workers=1),
                amp_dtype=amp,
            )

        def features(checkpoint: Path) -> dict[str, Features]:
            return {name: extracted(checkpoint, folder, samples) for name, (folder, samples) in sets.items()}

        base = features(base_path)
        val = [(path, classes.index(manifest.class_names[label])) for path, label in manifest.select("val")]
        lacking_rows = np.isin(base["base_test"].labels, [classes.index(n) for n in lacking])
        for variant in args.variants:
            checkpoint = RunFolder(args.run / variant).best
            site = features(checkpoint)
            bank = FeatureBank.load(checkpoint.parent / OOD_FILE)
            chosen_in = "training"
            if bank.route_margin is None and len(bank) == bank.sources.get("data"):
                print(json.dumps({"variant": variant, "skipped": "its bank holds no photo of its base"}))
                continue
            if bank.route_margin is None:
                # A model trained before it served beside its base: its bank holds its own photos (source
                # "data") first; the margin is chosen as training chooses it, on every base validation photo.
                bank = replace(bank, own_photos=bank.sources["data"])
                base_val = extracted(checkpoint, root, val)
                bank = replace(bank, route_margin=choose_route_margin(bank, base_val.embeddings))
                chosen_in = "this study"
            row: dict[str, Any] = {
                "variant": variant,
                "route_margin": round(float(bank.route_margin or 0.0), 4),
                "margin_chosen_in": chosen_in,
                "own_photos": bank.own_photos,
                "bank_photos": len(bank),
            }
            for name in sets:
                if name == "site":
                    continue
                to_base = bank.routes_to_base(site[name].embeddings)
                assert to_base is not None
                labels = base[name].labels
                right_base = base[name].logits.argmax(1) == labels
                right_site = site[name].logits.argmax(1) == labels
                right = np.where(to_base, right_base, right_site)
                row[name] = {
                    "photos": len(labels),
                    "answered_by_base": round(float(to_base.mean()), 4),
                    "accuracy_base": round(float(right_base.mean()), 4),
                    "accuracy_site_model": round(float(right_site.mean()), 4),
                    "accuracy_routed": round(float(right.mean()), 4),
                }
                if name == "base_test":
                    row[name] |= {
                        "lacking_photos": int(lacking_rows.sum()),
                        "lacking_accuracy_base": round(float(right_base[lacking_rows].mean()), 4),
                        "lacking_accuracy_site_model": round(float(right_site[lacking_rows].mean()), 4),
                        "lacking_accuracy_routed": round(float(right[lacking_rows].mean()), 4),
                    }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
