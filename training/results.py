"""The results table, read from run folders, so every figure in it comes from a run's own files.

python -m training.results runs/resnet50-paper runs/se_resnet50-paper ...
"""

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models import create_model

#: Test accuracies the paper reports after 50 epochs (Bai and Joe, section 4).
PAPER_ACCURACY = {"resnet50": "77.59%", "se_resnet50": "83.33%", "shared_se_resnet50": "best (no number)"}


def parameters(arch: str, num_classes: int, kwargs: dict[str, Any]) -> int:
    return sum(p.numel() for p in create_model(arch, num_classes=num_classes, **kwargs).parameters())


def row(run: Path) -> dict[str, Any]:
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "history.json").read_text())
    report_path = run / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    classes = len(report["class_names"]) if report else 6
    seconds = [epoch["seconds"] for epoch in history]
    best = max(history, key=lambda epoch: epoch["val_accuracy"])
    return {
        "run": run.name,
        "model": config["model"],
        "recipe": config["recipe"] + (" + bf16" if config.get("amp") else ""),
        "parameters": parameters(config["model"], classes, config.get("model_kwargs", {})),
        "paper": PAPER_ACCURACY.get(config["model"], "n/a"),
        "test_accuracy": report["accuracy"] if report else None,
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
        "epochs": f"{len(history)}/{config['epochs']}",
        "seconds_per_epoch": statistics.median(seconds),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = [
        "run",
        "model",
        "recipe",
        "parameters",
        "paper (test)",
        "ours (test)",
        "best val (epoch)",
        "epochs",
    ]
    header.append("s/epoch (median)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        test = f"{100 * r['test_accuracy']:.2f}%" if r["test_accuracy"] is not None else "(running)"
        best = f"{100 * r['best_val_accuracy']:.2f}% ({r['best_epoch']})"
        cells = [
            r["run"],
            r["model"],
            r["recipe"],
            f"{r['parameters']:,}",
            r["paper"],
            test,
            best,
            r["epochs"],
        ]
        cells.append(f"{r['seconds_per_epoch']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    sys.stdout.write(markdown([row(run) for run in args.runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
