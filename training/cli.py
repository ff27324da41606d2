"""The ``trashcam-train`` command: every command-line program of the training package, one
subcommand each (``python -m training.cli``; ``python -m training.run`` and the older module entry points
still work).

trashcam-train train --data ../shared/data/trashnet-112.tar.gz --model se_resnet50 --out runs/se
trashcam-train resume --out runs/se
trashcam-train evaluate --checkpoint runs/se/best.pt --manifest runs/se/manifest.json
trashcam-train calibrate --checkpoint weights/se_resnet50/model.pt --manifest \
    weights/se_resnet50/manifest.json --data data/trashnet-112.tar.gz
trashcam-train ood --checkpoint weights/se_resnet50/model.pt --manifest \
    weights/se_resnet50/manifest.json --data trashnet=data/trashnet-112.tar.gz --data extra=EXTRA
trashcam-train quantize --checkpoint weights/se_resnet50/model.pt --manifest \
    weights/se_resnet50/manifest.json --data trashnet=data/trashnet-112.tar.gz --data extra=EXTRA
trashcam-train speed --model resnet50 --batch-size 32 --input-size 128
trashcam-train export --run runs/se --out weights/se_resnet50
trashcam-train explanations faithfulness --checkpoint runs/se/best.pt --manifest runs/se/manifest.json
trashcam-train interpolate --start weights/se_resnet50/model.pt --end runs/g/best.pt \
    --manifest runs/g/manifest.json --out runs/g/wise.pt
trashcam-train results runs/resnet50-paper weights/se_resnet50
"""

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# tqdm ships no type information and the dev dependencies pin no stubs for it.
from tqdm import tqdm  # type: ignore[import-untyped]
from tqdm.contrib.logging import logging_redirect_tqdm  # type: ignore[import-untyped]

from models import list_models
from models.calibration import (
    DEFAULT_DISTANCE_QUANTILE,
    DEFAULT_ENERGY_QUANTILE,
    DEFAULT_MIN_PROBABILITY,
    DEFAULT_TARGET_ACCURACY,
    Calibration,
)
from models.checkpoint import CheckpointError, load_checkpoint
from models.files import DiskFullError
from models.ood import DEFAULT_BANK_PHOTOS, DEFAULT_K, OOD_FILE
from models.precision import DTYPES
from models.predictor import select_device
from models.runtime import QUANTIZED_NETWORK, RuntimeUnavailableError
from models.similarity import INDEX_FILE
from models.store import CHECKPOINT_FILE, SPEC_FILE
from training import explanations, export, interpolate, quantize, results
from training.archive import ArchiveError
from training.calibrate import calibrate_checkpoint
from training.config import DEFAULT_SPLIT, RECIPES, TrainConfig, make_config
from training.data import DataError, Loading, Photos
from training.distributed import Launch, launched
from training.engine import RunExistsError, TrainResult, resume, train
from training.evaluation import evaluate_checkpoint, write_report
from training.export import SUMS_FILE, refresh_exported, write_checksums
from training.index import build_index
from training.ood import build_feature_bank
from training.options import RUNTIME_OPTIONS, USER_OPTIONS, add_options, given_options
from training.progress import Progress, ProgressCallback
from training.quantize import QuantizationRefusedError
from training.run_folder import DATA_DIR, MANIFEST_FILE
from training.speed import time_train_steps
from training.split import ALL_SPLITS, DEFAULT_SOURCE, AnyManifest, create_manifest, manifest_and_root
from training.state import ResumeError
from training.transfer import base_options

logger = logging.getLogger("training.cli")

#: Errors that mean bad input or a bad file, reported as one line instead of a traceback.
USER_ERRORS = (
    ArchiveError,
    CheckpointError,
    DataError,
    DiskFullError,
    QuantizationRefusedError,
    ResumeError,
    RunExistsError,
    RuntimeUnavailableError,
    ValueError,
)


class TqdmProgress:
    """A progress bar per epoch phase, with running loss, accuracy and the run's ETA."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm[Any] | None = None
        self.key: tuple[int, str] | None = None

    def __call__(self, progress: Progress) -> None:
        if progress.phase in ("epoch", "prepare", "finish"):
            self.close()
            return
        key = (progress.epoch, progress.phase)
        if self.bar is None or key != self.key:
            self.close()
            desc = f"epoch {progress.epoch}/{progress.epochs} {progress.phase}"
            self.bar = tqdm(
                total=progress.steps, desc=desc, unit="batch", leave=False, disable=not self.enabled
            )
            self.key = key
        metrics = progress.metrics
        eta = "?" if progress.eta_seconds is None else tqdm.format_interval(progress.eta_seconds)
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.3f}", run_eta=eta, refresh=False
        )
        self.bar.update(progress.step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def kill_after_epoch(epoch: int) -> ProgressCallback:
    """A callback that SIGKILLs this process once ``epoch`` is checkpointed: a real crash, for testing
    that a run resumes exactly (no cleanup code runs, as after an out-of-memory kill)."""

    def callback(progress: Progress) -> None:
        if progress.phase == "epoch" and progress.epoch == epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def _callbacks(*callbacks: ProgressCallback | None) -> ProgressCallback:
    active = [callback for callback in callbacks if callback is not None]

    def callback(progress: Progress) -> None:
        for each in active:
            each(progress)

    return callback


#: What ``--manifest`` is, for every command that takes one.
MANIFEST_HELP = f"a run's {MANIFEST_FILE}: exactly its split"
#: The commands that live in modules of their own: each module declares its arguments and runs them.
MODULE_COMMANDS: dict[str, ModuleType] = {
    "export": export,
    "explanations": explanations,
    "interpolate": interpolate,
    "results": results,
}


def _add_photo_args(parser: argparse.ArgumentParser, *, data_help: str = "as for evaluate") -> None:
    """The checkpoint, and the photos it runs over: a data set split again, or a run's split."""
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", action="append", metavar="[NAME=]PATH", help=data_help)
    parser.add_argument("--manifest", type=Path, help=MANIFEST_HELP)


def _add_loading_args(parser: argparse.ArgumentParser) -> None:
    """How the photos are loaded and run (:class:`training.data.Loading`)."""
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device")
    parser.add_argument("--workers", type=int)


def _add_runtime_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, RUNTIME_OPTIONS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    launch = parser.add_argument_group(
        "several processes (torchrun's flags; training.distributed)",
        "train in N processes on this host (DDP: gloo on CPUs, NCCL with a GPU each), and on NNODES hosts "
        "when each runs the same command with its own --node-rank",
    )
    launch.add_argument("--nproc-per-node", type=int, default=1, metavar="N")
    launch.add_argument("--nnodes", type=int, default=1)
    launch.add_argument("--node-rank", type=int, default=0)
    launch.add_argument("--master-addr", default="127.0.0.1", help="rank 0's host")
    launch.add_argument("--master-port", type=int, default=29500)
    parser.add_argument(
        "--kill-after-epoch",
        type=int,
        metavar="K",
        help="testing: SIGKILL the process once epoch K is checkpointed",
    )


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="[NAME=]PATH",
        help="image folder (one sub-folder per class), .tar.gz or .zip; repeat for several data sets, "
        "each split on its own (NAME defaults to the file name); a manifest.csv with path and source "
        "columns at the class root tags photos with their sources",
    )
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument(
        "--model", choices=list_models(), help="default: se_resnet50, or the base model's architecture"
    )
    parser.add_argument(
        "--model-kwargs", type=json.loads, help="builder keywords as JSON, e.g. '{\"width\": 4}'"
    )
    paper = ("epochs", "batch_size", "optimizer", "lr", "input_size", "hflip")
    defaults = {key: TrainConfig.model_fields[key].default for key in paper}
    recipes = "; ".join(
        f"{name}: " + ", ".join(f"{key}={value}" for key, value in (values or defaults).items())
        for name, values in RECIPES.items()
    )
    parser.add_argument(
        "--recipe",
        default="paper",
        choices=list(RECIPES),
        help=f"defaults for the options below ({recipes})".replace("%", "%%"),
    )
    add_options(parser, [name for name in USER_OPTIONS if name not in RUNTIME_OPTIONS])
    _add_runtime_args(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trashcam-train",
        description="Train, resume, evaluate, calibrate, index, export and explain trashcam models, and "
        "store what tells photos unlike their training photos.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_args(commands.add_parser("train", help="start a new run"))
    resume_parser = commands.add_parser("resume", help="continue a run after its last checkpointed epoch")
    resume_parser.add_argument("--out", required=True, help="run folder")
    resume_parser.add_argument(
        "--epochs",
        type=int,
        help="shorten or lengthen the run: the schedule goes on from its current step over the new length",
    )
    _add_runtime_args(resume_parser)
    evaluate = commands.add_parser("evaluate", help="test report of a checkpoint")
    _add_photo_args(
        evaluate,
        data_help="data set; split again with the checkpoint's seed and fractions; with --manifest: where "
        "the manifest's data set is now (NAME=PATH per moved data set of a mixed run)",
    )
    evaluate.add_argument("--split", default="test", choices=[*ALL_SPLITS, "all"])
    evaluate.add_argument(
        "--out", type=Path, help="report folder (default: <checkpoint folder>/eval-<split>)"
    )
    _add_loading_args(evaluate)
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    calibrate = commands.add_parser(
        "calibrate",
        help="fit a checkpoint's temperature and 'unsure' thresholds on held-out photos (weights unchanged)",
    )
    _add_photo_args(calibrate)
    calibrate.add_argument("--split", default="val", choices=ALL_SPLITS, help="photos to fit on")
    calibrate.add_argument(
        "--out", type=Path, help="write the calibrated checkpoint here (default: over --checkpoint)"
    )
    calibrate.add_argument(
        "--min-probability",
        type=float,
        default=DEFAULT_MIN_PROBABILITY,
        help="calibrated top-1 probability under which a prediction is unsure",
    )
    calibrate.add_argument(
        "--energy-quantile",
        type=float,
        default=DEFAULT_ENERGY_QUANTILE,
        help="share of the photos whose energy is under the out-of-distribution threshold",
    )
    _add_loading_args(calibrate)
    index = commands.add_parser(
        "index", help="hash and embed a split's photos, for POST /similar (next to the checkpoint)"
    )
    _add_photo_args(index)
    index.add_argument("--split", default="train", choices=ALL_SPLITS, help="photos to index")
    index.add_argument("--out", type=Path, help=f"default: {INDEX_FILE} beside the checkpoint")
    _add_loading_args(index)
    ood = commands.add_parser(
        "ood",
        help=f"store the training photos' features beside a checkpoint ({OOD_FILE}) and choose its "
        "'sure' rule on the validation photos (weights unchanged)",
    )
    _add_photo_args(ood)
    ood.add_argument("--k", type=int, default=DEFAULT_K, help="the neighbour whose distance is the score")
    ood.add_argument(
        "--max-photos",
        type=int,
        default=DEFAULT_BANK_PHOTOS,
        help="training photos in the bank at most (drawn at random)",
    )
    ood.add_argument(
        "--distance-quantile",
        type=float,
        default=DEFAULT_DISTANCE_QUANTILE,
        help="share of the validation photos within the out-of-distribution threshold",
    )
    ood.add_argument(
        "--target",
        type=float,
        default=DEFAULT_TARGET_ACCURACY,
        help="share of sure validation answers that must be right",
    )
    _add_loading_args(ood)
    quantizer = commands.add_parser(
        "quantize",
        help=f"write an int8 network for OpenVINO beside a checkpoint ({QUANTIZED_NETWORK}), if it keeps "
        "its test top-1",
        description=quantize.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_photo_args(quantizer)
    quantize.add_arguments(quantizer)
    _add_loading_args(quantizer)
    speed = commands.add_parser("speed", help="time training steps per precision")
    speed.add_argument("--model", default="resnet50", choices=list_models())
    speed.add_argument("--batch-size", type=int, default=32)
    speed.add_argument("--input-size", type=int, default=128)
    speed.add_argument("--steps", type=int, default=5)
    speed.add_argument("--warmup", type=int, default=2)
    speed.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    speed.add_argument("--device")
    for name, module in MODULE_COMMANDS.items():
        command = commands.add_parser(
            name,
            help=(module.__doc__ or "").split("\n\n")[0].replace("\n", " "),
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
    return parser


def _finish(result: TrainResult) -> int:
    test = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    sys.stdout.write(
        f"{result.status}: {result.epochs_completed} epochs, best val acc {result.best_val_accuracy:.4f} "
        f"(epoch {result.best_epoch}), test acc {test}, in {result.out_dir}\n"
    )
    return 0 if result.status == "completed" else 3


def _launched_elsewhere(args: argparse.Namespace) -> int | None:
    """With several processes asked for and none started yet: start them under torchrun and return
    its exit status; else ``None`` (this process trains)."""
    if (args.nproc_per_node, args.nnodes) == (1, 1) or launched():
        return None
    processes = Launch(args.nproc_per_node, args.nnodes, args.node_rank, args.master_addr, args.master_port)
    return processes.run(args.argv)


def _progress(args: argparse.Namespace) -> tuple[TqdmProgress, ProgressCallback]:
    # One bar for the run: rank 0's, when several processes train it.
    bar = TqdmProgress(enabled=not args.no_progress and os.environ.get("RANK", "0") == "0")
    kill = None if args.kill_after_epoch is None else kill_after_epoch(args.kill_after_epoch)
    return bar, _callbacks(bar, kill)


def cmd_train(args: argparse.Namespace) -> int:
    status = _launched_elsewhere(args)
    if status is not None:
        return status
    options = given_options(args)
    if args.model_kwargs is not None and not isinstance(args.model_kwargs, dict):
        raise ValueError("--model-kwargs must be a JSON object")
    options["model_kwargs"] = args.model_kwargs
    # One unnamed data set is split exactly as it always was; several (or a named one) are a mixed run.
    data: str | tuple[str, ...] = (
        args.data[0] if len(args.data) == 1 and "=" not in args.data[0] else tuple(args.data)
    )
    if args.init_from is not None:
        base = load_checkpoint(args.init_from).spec
        options.update(
            base_options(
                base, model=args.model, model_kwargs=options["model_kwargs"], input_size=args.input_size
            )
        )
    config = make_config(args.recipe, data=data, out=args.out, **{"model": args.model, **options})
    bar, callback = _progress(args)
    try:
        return _finish(train(config, callback=callback))
    finally:
        bar.close()


def cmd_resume(args: argparse.Namespace) -> int:
    status = _launched_elsewhere(args)
    if status is not None:
        return status
    bar, callback = _progress(args)
    try:
        return _finish(
            resume(args.out, callback=callback, device=args.device, workers=args.workers, epochs=args.epochs)
        )
    finally:
        bar.close()


def _split_of(args: argparse.Namespace, scratch: Path) -> tuple[AnyManifest, Path]:
    """The manifest and data folder that ``evaluate`` and ``calibrate`` read: a run's manifest (with
    its data set moved by ``--data``), or one ``--data`` split again as the checkpoint was."""
    if args.manifest is not None:
        return manifest_and_root(
            args.manifest, args.data, scratch / DATA_DIR, run_data=args.manifest.parent / DATA_DIR
        )
    if args.data is None or len(args.data) != 1:
        raise ValueError(f"{args.command} needs --manifest, or one --data to split again")
    spec = load_checkpoint(args.checkpoint).spec
    split = spec.recipe.get("split", DEFAULT_SPLIT)
    manifest, root = create_manifest(
        args.data[0],
        scratch / DATA_DIR,
        seed=int(spec.recipe.get("seed", 0)),
        fractions=(float(split[0]), float(split[1]), float(split[2])),
        holdout=spec.recipe.get("holdout_sources", ()),
    )
    if manifest.digest != spec.recipe.get("data_digest"):
        logger.warning("data set or split differs from the one %s was trained on", args.checkpoint)
    return manifest, root


def _loading(args: argparse.Namespace) -> Loading:
    return Loading(select_device(args.device), args.batch_size, args.workers)


def cmd_evaluate(args: argparse.Namespace) -> int:
    out = args.out or args.checkpoint.parent / f"eval-{args.split}"
    with tempfile.TemporaryDirectory(prefix="trashcam-eval-") as scratch:
        manifest, root = _split_of(args, Path(scratch))
        bar = tqdm(desc=f"evaluate {args.split}", unit="batch", disable=args.no_progress, leave=False)

        def on_step(step: int, steps: int, metrics: Mapping[str, float]) -> None:
            bar.total = steps
            bar.update(step - bar.n)
            bar.set_postfix(accuracy=f"{metrics.get('accuracy', 0.0):.4f}", refresh=False)

        report = evaluate_checkpoint(
            args.checkpoint,
            Photos(root, manifest.select(args.split), manifest.class_names),
            _loading(args),
            split=args.split,
            sources=manifest.select_sources(args.split, DEFAULT_SOURCE),
            data_source=manifest.source,
            manifest_digest=manifest.digest,
            skipped_images=[{"path": path, "error": error} for path, error in manifest.skipped],
            on_step=on_step,
        )
        bar.close()
    write_report(report, out)
    sys.stdout.write(
        f"{args.split} accuracy {report['accuracy']:.4f} on {report['num_images']} images: {out}\n"
        f"  mean top-1 {report['mean_confidence']:.4f}, ECE {report['expected_calibration_error']:.4f} "
        f"(temperature {report['temperature']:.3f}; uncalibrated "
        f"{report['uncalibrated']['mean_confidence']:.4f}, "
        f"{report['uncalibrated']['expected_calibration_error']:.4f}); "
        f"unsure {report['unsure']['share']:.1%}, accuracy when sure "
        f"{report['unsure']['accuracy_when_sure']:.4f}\n"
    )
    for source, row in report["per_source"].items():
        sys.stdout.write(
            f"  {source}: accuracy {row['accuracy']:.4f}, macro recall {row['macro_recall']:.4f} "
            f"on {row['num_images']} images\n"
        )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="trashcam-calibrate-") as scratch:
        manifest, root = _split_of(args, Path(scratch))
        calibration = calibrate_checkpoint(
            args.checkpoint,
            Photos(root, manifest.select(args.split), manifest.class_names),
            _loading(args),
            split=args.split,
            out=args.out,
            min_probability=args.min_probability,
            energy_quantile=args.energy_quantile,
        )
    written = args.out or args.checkpoint
    if (written.parent / OOD_FILE).is_file():
        logger.warning(
            "the 'sure' rule is back to a probability of %s and no feature distance: run "
            "`trashcam-train ood --checkpoint %s ...` to choose it again with the new temperature",
            args.min_probability,
            written,
        )
    if written.name == CHECKPOINT_FILE and refresh_exported(written.parent):
        logger.info("updated %s (and any %s) in %s", SPEC_FILE, SUMS_FILE, written.parent)
    fitted = calibration.fitted_on or {}
    before, after = fitted["before"], fitted["after"]
    sys.stdout.write(
        f"temperature {calibration.temperature:.4f} on {fitted['images']} {args.split} photos: "
        f"NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
        f"ECE {before['expected_calibration_error']:.4f} -> {after['expected_calibration_error']:.4f}, "
        f"mean top-1 {before['mean_confidence']:.4f} -> {after['mean_confidence']:.4f}; "
        f"unsure under p={calibration.min_probability} or over energy {calibration.max_energy:.3f}: "
        f"{args.out or args.checkpoint}\n"
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    out = args.out or args.checkpoint.parent / INDEX_FILE
    with tempfile.TemporaryDirectory(prefix="trashcam-index-") as scratch:
        manifest, root = _split_of(args, Path(scratch))
        index = build_index(
            args.checkpoint,
            Photos(root, manifest.select(args.split), manifest.class_names),
            _loading(args),
            split=args.split,
        )
        index.save(out)
    sys.stdout.write(f"{len(index)} {args.split} photos indexed: {out} ({out.stat().st_size / 1e6:.1f} MB)\n")
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="trashcam-ood-") as scratch:
        manifest, root = _split_of(args, Path(scratch))
        bank = build_feature_bank(
            args.checkpoint,
            train=Photos(root, manifest.select("train"), manifest.class_names),
            val=Photos(root, manifest.select("val"), manifest.class_names),
            loading=_loading(args),
            sources=manifest.select_sources("train", DEFAULT_SOURCE),
            k=args.k,
            max_photos=args.max_photos,
            distance_quantile=args.distance_quantile,
            target_accuracy=args.target,
        )
    if args.checkpoint.name == CHECKPOINT_FILE and refresh_exported(args.checkpoint.parent):
        logger.info("updated %s (and any %s) in %s", SPEC_FILE, SUMS_FILE, args.checkpoint.parent)
    calibration = Calibration.from_dict(load_checkpoint(args.checkpoint).spec.calibration)
    out = args.checkpoint.parent / OOD_FILE
    sys.stdout.write(
        f"{len(bank)} training photos' features (k={bank.k}): {out} ({out.stat().st_size / 1e6:.1f} MB); "
        f"unsure under p={calibration.min_probability:.4f} (sure answers {args.target:.0%} right on the "
        f"validation photos) or over distance {calibration.max_distance:.4f}\n"
    )
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    quantize.check_arguments(args)
    with tempfile.TemporaryDirectory(prefix="trashcam-quantize-") as scratch:
        manifest, root = _split_of(args, Path(scratch))
        test = manifest.select("test")
        # Each data set of a mixed manifest is checked on its own (its paths start with its name).
        several = len(getattr(manifest, "parts", ())) > 1
        accuracy = quantize.quantize(
            args.checkpoint,
            root=root,
            class_names=manifest.class_names,
            calibration=manifest.select("train"),
            test=test,
            test_sets=[Path(path).parts[0] if several else "all" for path, _ in test],
            loading=_loading(args),
            photos=args.photos,
            seed=args.seed,
            max_drop=args.max_drop,
            validation=manifest.select("val"),
            max_val_drop=args.max_val_drop,
        )
    if (args.checkpoint.parent / SUMS_FILE).is_file():
        write_checksums(args.checkpoint.parent)  # an exported folder lists every file it holds
    sys.stdout.write(quantize.summary(accuracy, args.checkpoint.parent))
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    timings = [
        time_train_steps(
            args.model,
            precision=precision,
            batch_size=args.batch_size,
            input_size=args.input_size,
            steps=args.steps,
            warmup=args.warmup,
            device=device,
        )
        for precision in args.precisions
    ]
    for timing in timings:
        ratio = timings[0].seconds_per_step / timing.seconds_per_step
        sys.stdout.write(
            f"{args.model} {device} batch {args.batch_size} {args.input_size}px {timing.precision}: "
            f"{timing.seconds_per_step:.3f} s/step, {timing.images_per_second:.1f} img/s, "
            f"x{ratio:.2f} vs {timings[0].precision}\n"
        )
    return 0


COMMANDS = {
    "train": cmd_train,
    "resume": cmd_resume,
    "evaluate": cmd_evaluate,
    "calibrate": cmd_calibrate,
    "index": cmd_index,
    "ood": cmd_ood,
    "quantize": cmd_quantize,
    "speed": cmd_speed,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    # Of several processes training one run, rank 0 tells what happens; the others only what goes wrong.
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with logging_redirect_tqdm():
            if args.command in MODULE_COMMANDS:
                return int(MODULE_COMMANDS[args.command].run(args))
            return COMMANDS[args.command](args)
    except USER_ERRORS as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.warning("interrupted; `trashcam-train resume --out ...` continues from the last epoch")
        return 130


if __name__ == "__main__":
    sys.exit(main())
