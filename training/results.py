"""The results tables, read from run folders and exported model folders, so every figure in them comes
from a run's own files.

python -m training.results runs/resnet50-paper weights/se_resnet50 ... \\
    --faithfulness docs/faithfulness/resnet50-paper.json ...
python -m training.results --sources general=runs/g/report.json,runs/g/eval-holdout/report.json ...
"""

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models import create_model
from models.files import read_json
from models.store import SPEC_FILE
from training.engine import read_environment
from training.report import plot_risk_coverage
from training.run_folder import CONFIG_FILE, RunFolder

#: Test accuracies the paper reports after 50 epochs (Bai and Joe, section 4).
PAPER_ACCURACY = {"resnet50": "77.59%", "se_resnet50": "83.33%", "shared_se_resnet50": "best (no number)"}


def parameters(arch: str, num_classes: int, kwargs: dict[str, Any]) -> int:
    return sum(p.numel() for p in create_model(arch, num_classes=num_classes, **kwargs).parameters())


def run_config(folder: Path) -> dict[str, Any]:
    """The training config of a run folder, or of an exported model folder (from its spec's recipe)."""
    if RunFolder(folder).config.is_file():
        return dict(read_json(RunFolder(folder).config))
    if not (folder / SPEC_FILE).is_file():
        raise ValueError(
            f"{folder}: neither a run folder ({CONFIG_FILE}) nor an exported model ({SPEC_FILE})"
        )
    spec = read_json(folder / SPEC_FILE)["spec"]
    return {**spec["recipe"], "model": spec["arch"], "model_kwargs": spec["arch_kwargs"]}


def hardware(folder: Path, epochs_done: int) -> str:
    """Which device and precision trained which epochs, from the run's ``environment.json``."""
    processes = read_environment(RunFolder(folder).environment)
    if not processes:
        return "not recorded"
    spans = []
    for index, process in enumerate(processes):
        last = processes[index + 1]["first_epoch"] - 1 if index + 1 < len(processes) else epochs_done
        spans.append((f"{process['device']}, {process['precision']}", process["first_epoch"], last))
    if len({name for name, _, _ in spans}) == 1 and spans[0][1] == 1:
        return spans[0][0]
    return "; ".join(f"{name} (epochs {first}-{last})" for name, first, last in spans)


def row(folder: Path) -> dict[str, Any]:
    config = run_config(folder)
    history = json.loads(RunFolder(folder).history.read_text())
    report_path = RunFolder(folder).report
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    classes = len(report["class_names"]) if report else 6
    best = max(history, key=lambda epoch: epoch["val_accuracy"])
    return {
        "run": folder.name,
        "model": config["model"],
        "recipe": config["recipe"],
        "parameters": parameters(config["model"], classes, config.get("model_kwargs", {})),
        "paper": PAPER_ACCURACY.get(config["model"], "n/a"),
        "test_accuracy": report["accuracy"] if report else None,
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
        "epochs": f"{len(history)}/{config['epochs']}",
        "seconds_per_epoch": statistics.median(epoch["seconds"] for epoch in history),
        "hardware": hardware(folder, len(history)),
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "run",
        "model",
        "recipe",
        "parameters",
        "paper (test)",
        "ours (test)",
        "best val (epoch)",
        "epochs",
        "s/epoch (median)",
        "hardware",
    )
    cells = [
        (
            r["run"],
            r["model"],
            r["recipe"],
            f"{r['parameters']:,}",
            r["paper"],
            f"{100 * r['test_accuracy']:.2f}%" if r["test_accuracy"] is not None else "(unfinished)",
            f"{100 * r['best_val_accuracy']:.2f}% ({r['best_epoch']})",
            r["epochs"],
            f"{r['seconds_per_epoch']:.0f}",
            r["hardware"],
        )
        for r in rows
    ]
    return _table(header, cells)


def faithfulness_markdown(paths: Sequence[Path]) -> str:
    """One row per file written by ``python -m training.explanations faithfulness --out``."""
    header = (
        "scores",
        "model",
        "method",
        "images",
        "average drop (lower is better)",
        "increase in confidence (higher)",
        "deletion AUC (lower)",
        "insertion AUC (higher)",
    )
    cells = []
    for path in paths:
        scores = json.loads(path.read_text())
        cells.append(
            (
                path.stem,
                scores["arch"],
                scores["method"],
                f"{scores['images']} {scores['split']}",
                f"{scores['average_drop_pct']:.2f}%",
                f"{scores['increase_in_confidence_pct']:.2f}%",
                f"{scores['deletion_auc']:.3f}",
                f"{scores['insertion_auc']:.3f}",
            )
        )
    return _table(header, cells)


def sources_markdown(models: Sequence[tuple[str, Sequence[Path]]], *, reference: str = "trashnet") -> str:
    """Per-source accuracy (and macro recall over the classes a source has) of each named model, from
    its evaluation reports (e.g. its test and its holdout report), and the mean over the sources that
    are neither ``reference`` nor held out."""
    tables: list[dict[str, dict[str, Any]]] = []
    held_out: set[str] = set()
    for _, paths in models:
        merged: dict[str, dict[str, Any]] = {}
        for path in paths:
            report = json.loads(path.read_text())
            if "per_source" not in report:
                raise ValueError(f"{path}: no per-source results (evaluate it with a run's manifest)")
            merged.update(report["per_source"])
            if report.get("split") == "holdout":
                held_out |= set(report["per_source"])
        tables.append(merged)
    sources = sorted(set().union(*tables), key=lambda name: (name in held_out, name != reference, name))
    header = ("source", "photos", *(f"{name}: accuracy (macro recall)" for name, _ in models))
    cells = []
    for source in sources:
        counts = {table[source]["num_images"] for table in tables if source in table}
        label = f"{source} (held out)" if source in held_out else source
        cells.append(
            (
                label,
                "/".join(str(count) for count in sorted(counts)),
                *(
                    f"{100 * t[source]['accuracy']:.2f}% ({100 * t[source]['macro_recall']:.2f}%)"
                    if source in t
                    else "n/a"
                    for t in tables
                ),
            )
        )
    others = [source for source in sources if source != reference and source not in held_out]
    if others:
        means = []
        for table in tables:
            present = [table[source] for source in others if source in table]
            means.append(
                f"{100 * statistics.fmean(r['accuracy'] for r in present):.2f}% "
                f"({100 * statistics.fmean(r['macro_recall'] for r in present):.2f}%)"
            )
        cells.append((f"mean of {', '.join(others)}", "", *means))
    return _table(header, cells)


def calibration_markdown(reports: Sequence[tuple[str, Path]], figure: Path | None = None) -> str:
    """Per named evaluation report: ECE and mean top-1 probability before and after temperature
    scaling, the "unsure" share and accuracy when sure, then the risk-coverage table (and figure)."""
    loaded = [(name, json.loads(path.read_text())) for name, path in reports]
    for (_, path), (_, report) in zip(reports, loaded, strict=True):
        if "risk_coverage" not in report:
            raise ValueError(f"{path}: no calibration results (evaluate the checkpoint again)")
    calibration = _table(
        (
            "photos",
            "n",
            "accuracy",
            "temperature",
            "ECE raw -> calibrated",
            "mean top-1 raw -> calibrated",
            "unsure",
            "accuracy when sure",
        ),
        [
            (
                name,
                str(r["num_images"]),
                f"{100 * r['accuracy']:.2f}%",
                f"{r['temperature']:.3f}",
                f"{r['uncalibrated']['expected_calibration_error']:.3f} -> "
                f"{r['expected_calibration_error']:.3f}",
                f"{r['uncalibrated']['mean_confidence']:.3f} -> {r['mean_confidence']:.3f}",
                f"{100 * r['unsure']['share']:.1f}%",
                f"{100 * r['unsure']['accuracy_when_sure']:.2f}%",
            )
            for name, r in loaded
        ],
    )
    thresholds = [row["min_probability"] for row in loaded[0][1]["risk_coverage"]]
    coverage = _table(
        ("calibrated top-1 at least", *(f"{name}: answered, accuracy" for name, _ in loaded)),
        [
            (
                f"{threshold:g}",
                *(
                    f"{100 * rows[i]['coverage']:.1f}%, {100 * rows[i]['accuracy']:.2f}%"
                    for rows in (r["risk_coverage"] for _, r in loaded)
                ),
            )
            for i, threshold in enumerate(thresholds)
        ],
    )
    if figure is not None:
        plot_risk_coverage({name: r["risk_coverage"] for name, r in loaded}, figure)
    return calibration + "\n" + coverage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", type=Path, help="run folders or exported model folders")
    parser.add_argument(
        "--sources",
        action="append",
        default=[],
        metavar="NAME=REPORT[,REPORT...]",
        help="a per-source table: a model's name and its evaluation reports (test, holdout)",
    )
    parser.add_argument(
        "--faithfulness", nargs="+", type=Path, default=[], help="faithfulness score files (JSON)"
    )
    parser.add_argument(
        "--calibration",
        action="append",
        default=[],
        metavar="NAME=REPORT",
        help="calibration and risk-coverage tables of evaluation reports",
    )
    parser.add_argument("--risk-coverage-figure", type=Path, help="draw the risk-coverage curves here")


def run(args: argparse.Namespace) -> int:
    try:
        parts = [markdown([row(run) for run in args.runs])] if args.runs else []
        if args.faithfulness:
            parts.append(faithfulness_markdown(args.faithfulness))
        if args.sources:
            named = [item.split("=", 1) for item in args.sources]
            parts.append(
                sources_markdown([(name, [Path(p) for p in paths.split(",")]) for name, paths in named])
            )
        if args.calibration:
            pairs = [item.split("=", 1) for item in args.calibration]
            parts.append(calibration_markdown([(n, Path(p)) for n, p in pairs], args.risk_coverage_figure))
        text = "\n".join(parts)
    except (OSError, ValueError, KeyError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``trashcam-train results``, by this module's name."""
    from training.cli import main as command  # the command imports this module

    return command(["results", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
