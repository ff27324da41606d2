"""What keeps a site's fine-tuning from forgetting what the site did not upload: fine-tuning variants on k
photos per class of site sd, in-process (no service), each scored on sd's other photos and on the test
split of the base model's data sets (all photos, and those of the classes sd has none of), with weight
interpolation towards the base (WiSE-FT) at fixed points for one variant, and a variant's batch-norm
statistics estimated again on the site's own photos (``--renormalise``).

    python -m bench.retention_ablation --extra ../shared/data/waste-extra-144.tar.gz --seed 1 \\
        --variants sd-only replay-balanced-es5 replay-balanced replay75-balanced replay replay-distill \\
        --interpolate replay-balanced=0.3,0.5,0.7 --out runs/retention-seed1

Every variant uses the split 0.85/0.15/0 and the finetune recipe with the options below on top, so the
figures do not move when the recipe's defaults do. One JSON line per model on stdout and in
``results.jsonl``.
"""

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import update_bn

from bench.operator_story import draw, read_source
from bench.retained import retained_accuracy
from core.settings import PROJECT_ROOT, SHIPPED_MODEL_DIR
from models.checkpoint import load_checkpoint, save_checkpoint
from models.store import CHECKPOINT_FILE
from training.config import make_config
from training.data import Loading, Photos
from training.engine import train
from training.evaluation import evaluate_checkpoint, load_for_evaluation
from training.run_folder import RunFolder
from training.split import manifest_and_root
from training.transfer import base_options
from training.weights import interpolate

BASE = SHIPPED_MODEL_DIR / CHECKPOINT_FILE
BASE_MANIFEST = RunFolder(SHIPPED_MODEL_DIR).manifest
#: Nothing protects the classes the site lacks, unless a variant says so.
PLAIN: dict[str, Any] = {"replay_distill": 0.0, "forgetting_limit": 1.0, "early_stop": 0}
VARIANTS: dict[str, dict[str, Any]] = {
    # The site's classes only, as fine-tuning was before it kept its base's classes.
    "sd-only": {**PLAIN, "classes": "data", "replay": 0.0, "distill": 0.0},
    # Half of each epoch replayed, the replayed photos sampled with the site's class balance (1.0).
    "replay-balanced-es5": {**PLAIN, "replay_class_balance": 1.0, "early_stop": 5},
    "replay-balanced": {**PLAIN, "replay_class_balance": 1.0},
    "replay75-balanced": {**PLAIN, "replay_class_balance": 1.0, "replay": 0.75},
    # The replayed photos sampled as the base sampled them (0.5, 0.5).
    "replay": {**PLAIN, "replay_class_balance": 0.5},
    # ... with the base's answers on them distilled.
    "replay-distill": {**PLAIN, "replay_class_balance": 0.5, "replay_distill": 1.0},
    # The finetune recipe as it is.
    "recipe": {},
    # ... held to the base, with the base's batch-norm statistics kept, with the backbone at a tenth of the
    # rate, both.
    "recipe-frozen-norm": {"freeze_norm": True, "forgetting_limit": 0.05},
    "recipe-backbone-lr0.1": {"backbone_lr": 0.1, "forgetting_limit": 0.05},
    "recipe-frozen-norm-backbone-lr0.1": {"freeze_norm": True, "backbone_lr": 0.1, "forgetting_limit": 0.05},
    # The same two without the hold to the base, to see the ends the hold starts from.
    "frozen-norm-nohold": {"freeze_norm": True, "forgetting_limit": 1.0},
    "frozen-norm-backbone-lr0.1-nohold": {"freeze_norm": True, "backbone_lr": 0.1, "forgetting_limit": 1.0},
    "backbone-lr0.1-nohold": {"backbone_lr": 0.1, "forgetting_limit": 1.0},
    # The finetune recipe without the hold to the base (the recipe's default since it serves beside its base).
    "recipe-nohold": {"forgetting_limit": 1.0},
    "recipe-nohold-replay25": {"forgetting_limit": 1.0, "replay": 0.25},
    # Every class of the base kept as rows, nothing replayed or distilled: the site's photos only.
    "sd-only-base-classes": {**PLAIN, "replay": 0.0, "distill": 0.0},
    # Linear probing before fine-tuning (LP-FT, Kumar et al. 2022): the head fitted for 5 epochs on frozen
    # features, so that the backbone moves less once it learns.
    "recipe-nohold-probe5": {"forgetting_limit": 1.0, "freeze_epochs": 5},
    # A higher rate, and a longer schedule.
    "recipe-nohold-lr1e-3": {"forgetting_limit": 1.0, "lr": 1e-3},
    "recipe-nohold-60epochs": {"forgetting_limit": 1.0, "epochs": 60, "early_stop": 20},
    # The last epoch's weights kept instead of the epoch with the best accuracy on ~15 validation photos.
    "recipe-nohold-last": {"forgetting_limit": 1.0, "keep_epoch": "last"},
    # The site's photos at the size they were stored at (144 px) instead of the base's 112 px: paper and
    # plastic on one tray differ in texture more than in shape (FixRes, Touvron et al. 2019, fine-tunes
    # at a larger size than it trained at).
    "recipe-nohold-144px": {"forgetting_limit": 1.0, "input_size": 144},
    # One camera over one tray: its photos vary far less than the web photos the recipe's augmentation is
    # sized for. Milder augmentation (larger crops, no TrivialAugment or erasing, a little colour jitter)
    # keeps the texture that tells paper from plastic.
    "recipe-mild-augment": {
        "auto_augment": None,
        "crop_min_scale": 0.7,
        "random_erasing": 0.0,
        "color_jitter": 0.1,
    },
    # Label smoothing spreads a tenth of each site photo's target over the six classes, three of which the
    # site never shows.
    "recipe-no-smoothing": {"label_smoothing": 0.0},
    # The mean of the last third of the epochs' weights (stochastic weight averaging, Izmailov et al. 2018):
    # the last epoch alone is one point of a noisy path on 75 photos.
    "recipe-average10": {"average_epochs": 10},
    # The base's photos replayed for the classes the site lacks only: the site's photos alone say what its
    # own classes look like (a carton that sd files as paper need not look like the web's paper).
    "recipe-replay-lacking": {"replay_classes": "lacking"},
    # The replayed photos drawn in proportion to their sources' sizes, or with every class equally often:
    # the general recipe's n_source**-0.5 draws the small single-camera sources (a reverse-vending rail)
    # far more often than their share, and a camera over a tray looks more like a rig than a web photo.
    "recipe-replay-by-source-size": {"replay_source_balance": 0.0},
    "recipe-replay-class-balanced": {"replay_class_balance": 1.0},
    # Two that each scored higher on seed 2, together: the head fitted first, then a longer schedule.
    "recipe-probe5-60epochs": {"freeze_epochs": 5, "epochs": 60, "early_stop": 20},
}


def renormalise(checkpoint: Path, photos: Photos, out: Path) -> Path:
    """``checkpoint`` with its batch norms' statistics estimated again on ``photos`` alone (AdaBN, Li et
    al. 2016), its weights unchanged, written to ``out``.

    A site's model trains on batches that are half the base's web photos: its statistics are those of
    the mix, and it serves the photos that look like the site's (the rest go to its base).
    """
    loaded = load_for_evaluation(checkpoint, photos, Loading(torch.device("cpu"), batch_size=64, workers=1))
    update_bn(loaded.loader, loaded.model)  # a plain mean over every batch, as SWA estimates them
    save_checkpoint(out, loaded.model, loaded.checkpoint.spec)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--extra", type=Path, required=True, help="waste-extra-144.tar.gz")
    parser.add_argument("--trashnet", type=Path, default=PROJECT_ROOT / "data" / "trashnet-112.tar.gz")
    parser.add_argument("--source", default="sd")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--interpolate", action="append", default=[], metavar="VARIANT=A,B")
    parser.add_argument(
        "--renormalise",
        nargs="+",
        default=[],
        metavar="VARIANT",
        help="score these variants again with their batch norms' statistics estimated on the site's photos",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    photos = read_source(args.extra, args.source)
    site, test = draw(photos, args.k, args.seed)
    classes = sorted(photos)
    lacking = [name for name in load_checkpoint(BASE).spec.class_names if name not in photos]
    for label, items in site.items():
        for name, photo in items:
            (args.out / "site" / label).mkdir(parents=True, exist_ok=True)
            (args.out / "site" / label / name).write_bytes(photo)
    for label, name, photo in test:
        (args.out / "test" / label).mkdir(parents=True, exist_ok=True)
        (args.out / "test" / label / name).write_bytes(photo)
    samples = [(f"{label}/{name}", classes.index(label)) for label, name, _ in test]
    site_samples = [
        (f"{label}/{name}", classes.index(label)) for label, items in site.items() for name, _ in items
    ]
    data = [f"trashnet={args.trashnet}", f"extra={args.extra}"]
    replay = {"replay_manifest": str(BASE_MANIFEST), "replay_data": tuple(data)}
    results = args.out / "results.jsonl"

    with tempfile.TemporaryDirectory(prefix="retention-") as scratch:
        manifest, root = manifest_and_root(BASE_MANIFEST, data, Path(scratch), run_data=Path(scratch))

        def score(checkpoint: Path, name: str, seconds: float) -> None:
            site_report = evaluate_checkpoint(
                checkpoint,
                Photos(args.out / "test", samples, classes),
                Loading(torch.device("cpu"), batch_size=64, workers=1),
                split="test",
            )
            kept = retained_accuracy(checkpoint, manifest, root, lacking)
            row = {
                "variant": name,
                "seed": args.seed,
                "site_accuracy": site_report["accuracy"],
                "site_confusion": site_report["confusion_matrix"],
                "base_test_accuracy": kept["accuracy"],
                "base_test_accuracy_lacking": kept["accuracy_lacking"],
                "per_class": kept["per_class"],
                "train_seconds": round(seconds, 1),
            }
            print(json.dumps(row), flush=True)
            with open(results, "a") as handle:
                handle.write(json.dumps(row) + "\n")

        score(BASE, "base", 0.0)
        for name in args.variants:
            out = args.out / name
            options = {
                **base_options(load_checkpoint(BASE).spec),
                "init_from": str(BASE),
                "split": (0.85, 0.15, 0.0),
                **replay,
                **VARIANTS[name],
            }
            started = time.perf_counter()
            train(make_config("finetune", data=str(args.out / "site"), out=str(out), **options))
            score(RunFolder(out).best, name, time.perf_counter() - started)
        for name in args.renormalise:
            path = renormalise(
                RunFolder(args.out / name).best,
                Photos(args.out / "site", site_samples, classes),
                args.out / f"{name}-site-norm.pt",
            )
            score(path, f"{name} with the site's batch-norm statistics", 0.0)
        for item in args.interpolate:
            name, _, alphas = item.partition("=")
            base, end = load_checkpoint(BASE), load_checkpoint(RunFolder(args.out / name).best)
            for alpha in (float(a) for a in alphas.split(",")):
                path = args.out / f"{name}-wise{alpha}.pt"
                save_checkpoint(path, interpolate(base.state_dict, end.state_dict, alpha), end.spec)
                score(path, f"{name} interpolated at {alpha}", 0.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
