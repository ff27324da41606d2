"""What a run does after its last epoch, in one straight line (:func:`finish_run`): best.pt held to its
base (a fine-tune that replays its base's photos, with ``forgetting_limit``), final.pt, what serving
best.pt needs beside its weights (its calibration, the index of its training photos, its feature bank),
and best.pt's test report. A cancellation is heard between the long steps; a restarted finish repeats
them from the checkpoints, and the hold finds its own record and is not done twice.
"""

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models import create_model
from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from training.calibrate import CalibrationError, calibrate_checkpoint
from training.data import Photos, Sample
from training.evaluation import eval_loader, evaluate_checkpoint, predict, remap_labels, write_report
from training.index import build_index
from training.ood import build_feature_bank
from training.retain import check_samples, keep_within
from training.run_folder import BEST_FILE, FINAL_FILE
from training.seeding import derive_seed
from training.split import DEFAULT_SOURCE
from training.transfer import transfer_weights

if TYPE_CHECKING:
    from training.engine import _Run

logger = logging.getLogger(__name__)

#: At most this many of the base's replayed photos join a fine-tune's feature bank, and its validation
#: photos, drawn once with the run's seed: enough to know the base's sources, at a few seconds' cost.
BANK_REPLAYED_PHOTOS = 2048


def finish_run(run: "_Run", root: Path) -> float | None:
    """Everything after the last epoch; best.pt's test accuracy (``None``: the split has no test photos)."""
    run.write_history()
    hold_to_base(run, root)
    run.between("finish")
    test = run.manifest.select("test")
    save_final(run, root, test)
    calibrate_best(run, root)
    run.between("finish")
    index_best(run, root)
    run.between("finish")
    feature_bank(run, root)
    if not test:
        return None
    run.between("finish")
    return test_report(run, root, test)


def hold_to_base(run: "_Run", root: Path) -> None:
    """best.pt moved towards the base until it scores within ``forgetting_limit`` of it on the base's
    validation photos of the classes the data lacks (``training.retain``); recorded in its spec as
    ``forgetting_check``, and done once (a restarted finish finds the record)."""
    config = run.config
    if run.replay is None or config.forgetting_limit >= 1 or config.init_from is None:
        return
    best = load_checkpoint(run.folder.best)
    if "forgetting_check" in best.spec.recipe:
        return
    lacking = [name for name in run.class_names if name not in run.manifest.class_names]
    samples = check_samples(run.replay.val_samples, run.class_names, lacking, config.seed)
    record: dict[str, Any]
    state = best.state_dict
    if not samples:
        record = {"skipped": "no validation photos of a class the data lacks", "classes": lacking}
    else:
        model = create_model(config.model, num_classes=len(run.class_names), **config.model_kwargs)
        model.load_state_dict(best.state_dict)
        # The base's weights; a class the base lacks keeps the fine-tuned row at every point.
        transfer_weights(model, run.base(), run.class_names)
        base_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        model.to(run.device)
        loader = eval_loader(run.spec, root, samples, run.loading)

        def accuracy(weights: dict[str, torch.Tensor]) -> float:
            model.load_state_dict(weights)
            return predict(model, loader, device=run.device, amp_dtype=run.amp).accuracy

        kept = keep_within(base_state, best.state_dict, accuracy, limit=config.forgetting_limit)
        # The run's own validation accuracy of the weights kept (the epoch's metrics are the end's).
        model.load_state_dict(kept.state)
        held = predict(model, run.val_loader, device=run.device, amp_dtype=run.amp).accuracy
        record = {**kept.record, "classes": lacking, "photos": len(samples), "val_accuracy": held}
        state = kept.state
        logger.info(
            "kept within %.2f of the base on %d photos of %s: alpha %.1f (%.4f against the base's %.4f)",
            config.forgetting_limit,
            len(samples),
            lacking,
            record["alpha"],
            record["accuracy"],
            record["base_accuracy"],
        )
    recipe = {**best.spec.recipe, "forgetting_check": record}
    metrics = {**best.spec.metrics}
    if "val_accuracy" in record:
        metrics["held_val_accuracy"] = record["val_accuracy"]
    spec = ModelSpec.from_dict({**best.spec.to_dict(), "recipe": recipe, "metrics": metrics})
    save_checkpoint(run.folder.best, state, spec)


def save_final(run: "_Run", root: Path, test: list[Sample]) -> None:
    """final.pt: the last epoch's weights, with their test metrics when the split has test photos."""
    # The figures of the weights' mean belong to best.pt.
    metrics = {key: value for key, value in run.history[-1].items() if not key.startswith("averaged_")}
    if test:
        loader = eval_loader(run.spec, root, test, run.loading)
        final_test = predict(run.model, loader, device=run.device)
        metrics.update(test_loss=final_test.loss, test_accuracy=final_test.accuracy)
    run.save_model(FINAL_FILE, metrics)


def replayed_draw(run: "_Run", count: int, purpose: str) -> list[int]:
    """At most :data:`BANK_REPLAYED_PHOTOS` of ``count`` replayed photos, drawn with the run's seed
    for ``purpose``, in their order."""
    generator = torch.Generator().manual_seed(derive_seed(run.config.seed, purpose))
    return sorted(torch.randperm(count, generator=generator)[:BANK_REPLAYED_PHOTOS].tolist())


def validation_photos(run: "_Run") -> list[Sample]:
    """The photos that calibrate best.pt and choose its "sure" rule: the validation split, and for a
    fine-tune that replays its base's photos a sample of the base's validation photos too (drawn
    with the run's seed), so that a site's few photos are not all the rule is chosen on."""
    manifest = run.manifest
    val = remap_labels(manifest.select("val"), manifest.class_names, run.class_names)
    if run.replay is not None:
        chosen = replayed_draw(run, len(run.replay.val_samples), "validation")
        val += [run.replay.val_samples[i] for i in chosen]
    return val


def calibrate_best(run: "_Run", root: Path) -> None:
    """Fit best.pt's temperature and "unsure" thresholds on the validation photos, when it can be."""
    try:
        calibrate_checkpoint(
            run.folder.best, Photos(root, validation_photos(run), run.class_names), run.loading
        )
    except CalibrationError as error:
        logger.warning("%s stays uncalibrated: %s", BEST_FILE, error)


def routes_to_base(run: "_Run") -> bool:
    """Whether best.pt is to serve beside its base (``route``): it needs the base's photos to route
    by, and the base's classes, so that either model's answer reads the same."""
    return run.config.route and run.replay is not None and run.class_names == run.config.init_classes


def feature_bank(run: "_Run", root: Path) -> None:
    """The features of the training photos as best.pt sees them, and its "sure" rule chosen on the
    validation photos (``ood.npz``, and best.pt's calibration). A fine-tune's bank and validation
    photos hold a sample of its base's too, so that what the base knew still counts as familiar, and,
    with ``route``, so that the service can tell which photos its base should answer."""
    manifest = run.manifest
    train = remap_labels(manifest.select("train"), manifest.class_names, run.class_names)
    sources = manifest.select_sources("train", DEFAULT_SOURCE)
    val = validation_photos(run)
    own_photos, base_val_photos = len(train), len(val) - len(manifest.select("val"))
    if run.replay is not None:
        chosen = replayed_draw(run, len(run.replay.samples), "feature-bank")
        train += [run.replay.samples[i] for i in chosen]
        sources += [run.replay.sources[i] for i in chosen]
    try:
        build_feature_bank(
            run.folder.best,
            train=Photos(root, train, run.class_names),
            val=Photos(root, val, run.class_names),
            loading=run.loading,
            sources=sources,
            own_photos=own_photos if run.replay is not None else None,
            base_val_photos=base_val_photos,
            route=routes_to_base(run),
            target_accuracy=run.config.sure_target_accuracy,
            seed=derive_seed(run.config.seed, "feature-bank"),
        )
    except ValueError as error:
        logger.warning("%s has no feature bank: %s", BEST_FILE, error)


def index_best(run: "_Run", root: Path) -> None:
    """The hashes and embeddings of the training photos as best.pt sees them (``index.npz``)."""
    photos = Photos(root, run.manifest.select("train"), run.manifest.class_names)
    build_index(run.folder.best, photos, run.loading).save(run.folder.index)


def test_report(run: "_Run", root: Path, test: list[Sample]) -> float:
    """best.pt's report on the test photos (``report.json`` and its figures); best.pt is rewritten with
    the weights of its epoch, now with its test metrics too. Its test accuracy."""
    manifest = run.manifest
    report = evaluate_checkpoint(
        run.folder.best,
        Photos(root, test, manifest.class_names),
        run.loading,
        split="test",
        sources=manifest.select_sources("test", DEFAULT_SOURCE),
        manifest_digest=manifest.digest,
        best_epoch=run.best_epoch,
        skipped_images=[{"path": path, "error": error} for path, error in manifest.skipped],
    )
    best = run.history[run.best_epoch - 1]
    metrics = {**best, "test_loss": report["loss"], "test_accuracy": report["accuracy"]}
    rewrite_metrics(run.folder.best, metrics)
    write_report(report, run.folder.path)
    return float(report["accuracy"])


def rewrite_metrics(path: Path, metrics: dict[str, Any]) -> None:
    checkpoint = load_checkpoint(path)
    spec = ModelSpec.from_dict({**checkpoint.spec.to_dict(), "metrics": metrics})
    save_checkpoint(path, checkpoint.state_dict, spec)
