"""Export a trained run: as a shippable model folder (fp16 weights, spec, report, checksums), or as its
record alone (config, split, hardware, history, curves, report) for the results pages.

python -m training.export --run runs/se_resnet50-paper --out weights/se_resnet50
python -m training.export --run runs/resnet50-paper --out docs/runs/resnet50-paper --record-only
"""

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from models.checkpoint import (
    Checkpoint,
    ModelSpec,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)
from models.files import read_json, redact, write_json
from models.store import CHECKPOINT_FILE, SPEC_FILE
from training.run_folder import (
    BEST_FILE,
    CONFUSION_FILE,
    RECORD_FILES,
    REPORT_FILE,
    REPORT_FILES,
    RESUME_FILE,
    RunFolder,
)
from training.state import load_resume_state

SUMS_FILE = "SHA256SUMS"


def record_labels() -> dict[str, str]:
    """Paths in a shipped record: relative to the folder the export runs in (the project), other
    machines' folders left out (see ``models.files.redact_paths``)."""
    return {str(Path.cwd()): ""}


def copy_record(run: Path, out: Path, *, checkpoint: str = BEST_FILE) -> list[Path]:
    """Copy the run's record files that exist into ``out``, their paths made relative to the project;
    the report only along with best.pt."""
    names = RECORD_FILES + (REPORT_FILES if checkpoint == BEST_FILE else ())
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (name for name in names if (run / name).is_file()):
        if name.endswith(".json"):
            write_json(out / name, redact(read_json(run / name), record_labels()))
        else:
            shutil.copyfile(run / name, out / name)
        copied.append(out / name)
    return copied


def run_checkpoint(run: Path, name: str) -> Checkpoint:
    """A checkpoint of the run: ``best.pt``, ``final.pt``, or the weights of the last finished epoch
    (``resume.pt``, with best.pt's spec and that epoch's metrics), to compare runs at equal epochs."""
    folder = RunFolder(run)
    if name != RESUME_FILE:
        return load_checkpoint(folder.checkpoint(name))
    state = load_resume_state(folder.resume)
    spec = load_checkpoint(folder.best).spec
    metrics = dict(state.history[-1]) if state.history else {}
    return Checkpoint(
        spec=ModelSpec.from_dict({**spec.to_dict(), "metrics": metrics}),
        state_dict=state.model,
        sha256=state_dict_sha256(state.model),
    )


def with_test_report(loaded: Checkpoint, report_dir: Path) -> Checkpoint:
    """``loaded`` with the test metrics of its own test report (``trashcam-train evaluate``'s folder),
    for a checkpoint other than best.pt, whose run holds none; refuses a report of other weights."""
    path = report_dir / REPORT_FILE
    report = read_json(path)
    if report.get("checkpoint_sha256") != loaded.sha256:
        raise ValueError(f"{path} is the report of other weights than the exported ones")
    if report.get("split") != "test":
        raise ValueError(f"{path} is a report of the {report.get('split')} split, not test")
    metrics = {**loaded.spec.metrics, "test_loss": report["loss"], "test_accuracy": report["accuracy"]}
    spec = ModelSpec.from_dict({**loaded.spec.to_dict(), "metrics": metrics})
    return Checkpoint(spec=spec, state_dict=loaded.state_dict, sha256=loaded.sha256)


def export_run(run: Path, out: Path, *, checkpoint: str = BEST_FILE, report: Path | None = None) -> Path:
    """Write ``out/model.pt`` (fp16), ``spec.json``, the run's record and ``SHA256SUMS``; with ``report``
    (the checkpoint's own test report folder), that report too, its test metrics in the spec."""
    loaded = run_checkpoint(run, checkpoint)
    if report is not None:
        loaded = with_test_report(loaded, report)
    out.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec.from_dict(redact(loaded.spec.to_dict(), record_labels()))
    weights_sha = save_checkpoint(out / CHECKPOINT_FILE, loaded.state_dict, spec, dtype=torch.float16)
    meta = {"spec": spec.to_dict(), "sha256": weights_sha, "source": f"{run.name}/{checkpoint}"}
    (out / SPEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    copy_record(run, out, checkpoint=checkpoint)
    if report is not None:
        write_json(out / REPORT_FILE, redact(read_json(report / REPORT_FILE), record_labels()))
        shutil.copyfile(report / CONFUSION_FILE, out / CONFUSION_FILE)
    write_checksums(out)
    return out / CHECKPOINT_FILE


def write_checksums(folder: Path) -> None:
    """``SHA256SUMS`` of every other file in an exported folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != SUMS_FILE)
    (folder / SUMS_FILE).write_text("".join(f"{file_sha256(p)}  {p.name}\n" for p in files))


def refresh_exported(folder: Path) -> bool:
    """After its checkpoint's spec changed (e.g. calibrated), bring the ``spec.json`` beside it (an
    exported folder's, or a model store version's) and any ``SHA256SUMS`` up to date; False if the
    folder has no ``spec.json``."""
    if not (folder / SPEC_FILE).is_file():
        return False
    loaded = load_checkpoint(folder / CHECKPOINT_FILE)
    meta = json.loads((folder / SPEC_FILE).read_text())
    meta.update({"spec": loaded.spec.to_dict(), "sha256": loaded.sha256})
    (folder / SPEC_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if (folder / SUMS_FILE).is_file():
        write_checksums(folder)
    return True


def read_checksums(folder: Path) -> dict[str, str]:
    """File name to sha256, as an exported folder's ``SHA256SUMS`` lists them (``sha256sum`` format)."""
    lines = (folder / SUMS_FILE).read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="a training run folder")
    parser.add_argument(
        "--checkpoint",
        default=BEST_FILE,
        help=f"which checkpoint of the run ({RESUME_FILE}: the weights of its last finished epoch)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--report",
        type=Path,
        help=f"the checkpoint's own test report (an evaluate --split test folder), for one other than "
        f"{BEST_FILE}",
    )
    parser.add_argument(
        "--record-only", action="store_true", help="copy the run's record files, without weights"
    )


def run(args: argparse.Namespace) -> int:
    if args.record_only:
        copied = copy_record(args.run, args.out)
        sys.stdout.write(f"{args.out}: {len(copied)} files\n")
        return 0
    path = export_run(args.run, args.out, checkpoint=args.checkpoint, report=args.report)
    sys.stdout.write(f"{path}: {path.stat().st_size / 1e6:.1f} MB\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``trashcam-train export``, by this module's name."""
    from training.cli import main as command  # the command imports this module

    return command(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
