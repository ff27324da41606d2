"""The table of ``bench.review_loop`` runs: per round and seed, the site's test accuracy, the unsure share
and the accuracy when sure, for labels the queue chose (least sure first) and labels drawn at random, and
their means over the seeds.

    python -m bench.review_loop_summary docs/operator/review-loop-seed*/results.json
"""

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def cells(scores: dict[str, Any]) -> str:
    job = scores.get("job_seconds")
    return " | ".join(
        [
            percent(scores["accuracy"]),
            percent(scores["unsure_share"]),
            percent(scores["accuracy_when_sure"]),
            "-" if job is None else f"{job:.0f} s",
        ]
    )


def average(rows: Sequence[dict[str, Any]], arm: str, key: str) -> float | None:
    """The mean of ``key`` over the rows' ``arm`` where it is measured (None: nowhere)."""
    values = [row[arm][key] for row in rows if row[arm][key] is not None]
    return mean(values) if values else None


def main(argv: Sequence[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    runs = [json.loads(path.read_text()) for path in paths]
    header = (
        "| seed | round | labels | queue: accuracy | unsure | right when sure | job "
        "| random: accuracy | unsure | right when sure | job |"
    )
    lines = [header, "|" + "---|" * 11]
    for run in runs:
        for row in run["rounds"]:
            lines.append(
                f"| {run['seed']} | {row['round']} | {row['labels']} | {cells(row['review'])} "
                f"| {cells(row['random'])} |"
            )
    rounds = min(len(run["rounds"]) for run in runs)
    for number in range(rounds):
        rows = [run["rounds"][number] for run in runs]
        means = [
            percent(average(rows, arm, key))
            for arm in ("review", "random")
            for key in ("accuracy", "unsure_share", "accuracy_when_sure")
        ]
        queue, drawn = " | ".join(means[:3]), " | ".join(means[3:])
        lines.append(f"| mean | {number} | {rows[0]['labels']} | {queue} | | {drawn} | |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
