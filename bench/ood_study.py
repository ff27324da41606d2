"""Which out-of-distribution score tells the shipped model's sure answers apart on photos unlike its
training data: energy, k-nearest-neighbour cosine distance to the training photos' pooled features
(Sun et al. 2022) with several k and bank sizes, and a class-conditional Mahalanobis distance with a
shared covariance (Lee et al. 2018). Each is combined with calibrated confidence by the service's rule
(the OOD threshold at a quantile of the validation photos, the confidence threshold chosen on them for
"sure answers at least P% right") and scored on the test split, on held-out site sd and on site er.

    python -m bench.ood_study --extra ../shared/data/waste-extra-144.tar.gz \\
        --extra2 ../shared/data/waste-extra2-144.tar.gz --out runs/ood

Features are cached in ``--out`` (``features-*.npz``); one JSON line per score and target on stdout.
"""

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from bench.operator_story import read_source
from core.settings import PROJECT_ROOT, SHIPPED_MODEL_DIR
from models.calibration import Calibration, choose_min_probability
from models.checkpoint import load_checkpoint
from models.ood import OOD_FILE, FeatureBank
from models.precision import choose_precision
from models.store import CHECKPOINT_FILE
from training.data import Loading, Photos
from training.features import Features, extract_features
from training.report import plot_risk_coverage, risk_coverage
from training.run_folder import RunFolder
from training.split import manifest_and_root

BASE = SHIPPED_MODEL_DIR / CHECKPOINT_FILE
BASE_MANIFEST = RunFolder(SHIPPED_MODEL_DIR).manifest
Array = npt.NDArray[np.float32]


def cached_features(out: Path, name: str, compute: Callable[[], Features]) -> Features:
    path = out / f"features-{name}.npz"
    if not path.exists():
        features = compute()
        np.savez(path, logits=features.logits, embeddings=features.embeddings, labels=features.labels)
    data = np.load(path)
    return Features(data["logits"], data["embeddings"], data["labels"])


def site_features(archive: Path, source: str, classes: Sequence[str], scratch: Path) -> Features:
    photos = read_source(archive, source)
    samples = []
    for label, items in photos.items():
        for name, photo in items:
            (scratch / source / label).mkdir(parents=True, exist_ok=True)
            (scratch / source / label / name).write_bytes(photo)
            samples.append((f"{label}/{name}", classes.index(label)))
    cpu = torch.device("cpu")
    return extract_features(
        BASE,
        Photos(scratch / source, samples, classes),
        Loading(cpu, workers=1),
        amp_dtype=choose_precision(cpu).dtype,
    )


def bank_scorer(bank: FeatureBank) -> Callable[[Features], Array]:
    return lambda features: bank.scores(features.embeddings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--extra", type=Path, required=True)
    parser.add_argument("--extra2", type=Path, required=True)
    parser.add_argument("--trashnet", type=Path, default=PROJECT_ROOT / "data" / "trashnet-112.tar.gz")
    parser.add_argument("--target", type=float, nargs="+", default=[0.95, 0.93, 0.90])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rule-out", type=Path, help="write the shipped rule's figures here (JSON)")
    parser.add_argument("--rule-only", action="store_true", help="only the shipped rule, no comparison")
    parser.add_argument("--rule-figure", type=Path, help="plot the rule's risk-coverage curves here (PNG)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(BASE)
    classes = list(checkpoint.spec.class_names)
    calibration = Calibration.from_dict(checkpoint.spec.calibration)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="ood-") as scratch_name:
        scratch = Path(scratch_name)
        data = [f"trashnet={args.trashnet}", f"extra={args.extra}"]
        manifest, root = manifest_and_root(BASE_MANIFEST, data, scratch, run_data=scratch)

        def split(name: str) -> Callable[[], Features]:
            return lambda: extract_features(
                BASE,
                Photos(root, manifest.select(name), classes),
                Loading(cpu, workers=1),
                amp_dtype=choose_precision(cpu).dtype,
            )

        sets = {name: cached_features(args.out, name, split(name)) for name in ("train", "val", "test")}
        sets["sd"] = cached_features(
            args.out, "sd", lambda: site_features(args.extra, "sd", classes, scratch)
        )
        sets["er"] = cached_features(
            args.out, "er", lambda: site_features(args.extra2, "er", classes, scratch)
        )
        test_sources = np.array(manifest.select_sources("test", "trashnet"), dtype=object)

    train = sets["train"]
    rng = np.random.default_rng(0)
    scorers: dict[str, Callable[[Features], Array]] = {
        "energy": lambda f: -torch.logsumexp(torch.from_numpy(f.logits), dim=1).numpy(),
    }
    for size in (None, 4096, 2048):
        chosen = (
            np.arange(len(train.labels))
            if size is None
            else rng.choice(len(train.labels), size, replace=False)
        )
        for k in (1, 10, 50):
            if size is not None and k == 50:
                continue
            bank = FeatureBank.from_embeddings(train.embeddings[chosen], k=k, model_sha256="")
            scorers[f"knn k={k} bank={size or len(chosen)}"] = bank_scorer(bank)
    means = np.stack([train.embeddings[train.labels == c].mean(0) for c in range(len(classes))])
    centred = train.embeddings - means[train.labels]
    precision = np.linalg.pinv(np.cov(centred, rowvar=False) + 1e-6 * np.eye(centred.shape[1]))

    def mahalanobis(f: Features) -> Array:
        # The smallest distance to a class mean under the shared covariance.
        centred = (f.embeddings[:, None, :] - means[None]).reshape(-1, means.shape[1])
        distances = ((centred @ precision) * centred).sum(1)
        return distances.reshape(len(f.embeddings), len(means)).min(1)

    scorers["mahalanobis"] = mahalanobis

    def probabilities(f: Features) -> Array:
        return calibration.probabilities(torch.from_numpy(f.logits)).numpy()

    for name, score in {} if args.rule_only else scorers.items():
        val_scores = score(sets["val"])
        val_p = probabilities(sets["val"])
        val_right = val_p.argmax(1) == sets["val"].labels
        auroc = {}
        for site in ("sd", "er"):
            site_scores = score(sets[site])
            both = np.concatenate([score(sets["test"]), site_scores])
            is_site = np.concatenate([np.zeros(len(sets["test"].labels)), np.ones(len(site_scores))])
            order = np.argsort(both)
            ranks = np.empty(len(both))
            ranks[order] = np.arange(1, len(both) + 1)
            positives = is_site.sum()
            auroc[site] = float(
                (ranks[is_site == 1].sum() - positives * (positives + 1) / 2)
                / (positives * (len(both) - positives))
            )
        for quantile in (0.90, 0.95, 0.99):
            max_score = float(np.quantile(val_scores, quantile))
            for target in args.target:
                passed = val_scores <= max_score
                min_p = choose_min_probability(val_p.max(1)[passed], val_right[passed], target)
                row: dict[str, object] = {
                    "score": name,
                    "quantile": quantile,
                    "target": target,
                    "max_score": max_score,
                    "min_probability": min_p,
                    "auroc_vs_test": auroc,
                }
                for set_name in ("val", "test", "sd", "er"):
                    f = sets[set_name]
                    p = probabilities(f)
                    sure = (score(f) <= max_score) & (p.max(1) >= min_p)
                    right = p.argmax(1) == f.labels
                    row[set_name] = {
                        "answered": round(float(sure.mean()), 4),
                        "right_when_sure": round(float(right[sure].mean()), 4) if sure.any() else None,
                        "accuracy": round(float(right.mean()), 4),
                    }
                f = sets["test"]
                p = probabilities(f)
                sure = (score(f) <= max_score) & (p.max(1) >= min_p)
                right = p.argmax(1) == f.labels
                row["test_by_source"] = {
                    source: [
                        round(float(sure[test_sources == source].mean()), 3),
                        round(float(right[sure & (test_sources == source)].mean()), 3)
                        if (sure & (test_sources == source)).any()
                        else None,
                    ]
                    for source in sorted(set(test_sources))
                }
                print(json.dumps(row), flush=True)
    rule_rows = shipped_rule(checkpoint, calibration, sets, test_sources)
    if args.rule_figure is not None:
        # Each set's photos like the training photos, by calibrated probability threshold.
        curves = {rule_row["set"]: rule_row["after"]["rows"] for rule_row in rule_rows}
        plot_risk_coverage(
            curves, args.rule_figure, title="the shipped model: photos unlike its training photos never sure"
        )
    for rule_row in rule_rows:
        for side in ("before", "after"):
            del rule_row[side]["rows"]
        print(json.dumps(rule_row), flush=True)
    if args.rule_out is not None:
        args.rule_out.parent.mkdir(parents=True, exist_ok=True)
        args.rule_out.write_text(json.dumps(rule_rows, indent=2) + "\n")
    return 0


def aurc(keys: Array, right: npt.NDArray[np.bool_]) -> float:
    """Area under the risk-coverage curve: the mean error of the k surest answers over every k."""
    order = np.argsort(-keys, kind="stable")
    errors = np.cumsum(~right[order]) / np.arange(1, len(right) + 1)
    return float(errors.mean())


def shipped_rule(
    checkpoint: Any, calibration: Calibration, sets: dict[str, Features], test_sources: npt.NDArray[Any]
) -> list[dict[str, Any]]:
    """The shipped model's rule before (calibrated top-1 under 0.5 or energy over its threshold) and
    after (the feature distance too, the probability threshold chosen for its target), on each set: the
    share answered, right when sure, and the AURC of the ranking each implies (photos unlike the
    training photos after every other)."""
    bank = FeatureBank.load(BASE.parent / OOD_FILE, model_sha256=checkpoint.sha256)
    before = Calibration(
        temperature=calibration.temperature, min_probability=0.5, max_energy=calibration.max_energy
    )
    views = {
        "test (all seven sources)": (sets["test"], np.ones(len(sets["test"].labels), bool)),
        "test, TrashNet": (sets["test"], test_sources == "trashnet"),
        "test, six other sources": (sets["test"], test_sources != "trashnet"),
        "sd (held out)": (sets["sd"], np.ones(len(sets["sd"].labels), bool)),
        "er (held out)": (sets["er"], np.ones(len(sets["er"].labels), bool)),
    }
    rows = []
    for name, (features, mask) in views.items():
        logits = torch.from_numpy(features.logits[mask])
        probabilities = calibration.probabilities(logits).numpy()
        confidence = probabilities.max(1)
        right = probabilities.argmax(1) == features.labels[mask]
        energy = -torch.logsumexp(logits, dim=1).numpy()
        distance = bank.scores(features.embeddings[mask])
        row: dict[str, Any] = {"set": name, "photos": int(mask.sum()), "accuracy": float(right.mean())}
        for label, rule, distances in (("before", before, None), ("after", calibration, distance)):
            unlike = rule.unlike_training_all(energy, distances)
            sure = (confidence >= rule.min_probability) & ~unlike
            curve = risk_coverage(confidence - unlike.astype(np.float32), right)
            row[label] = {
                "rows": curve,
                "answered": float(sure.mean()),
                "right_when_sure": float(right[sure].mean()) if sure.any() else None,
                "aurc": aurc(confidence - unlike.astype(np.float32), right),
                "curve": [
                    {"answered": float(point["coverage"]), "right": float(point["accuracy"])}
                    for point in curve
                ],
            }
        row["aurc_confidence_only"] = aurc(confidence, right)
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
