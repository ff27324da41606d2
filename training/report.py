"""Classification metrics, training curves and the confusion-matrix figure.

Metrics are pure functions of label arrays. Figures are drawn with matplotlib's object API on the Agg
canvas (no pyplot, no display, safe in worker processes) and written atomically as PNG.
"""

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from models.files import atomic_write_bytes
from training.run_folder import ACCURACY_CURVE_FILE, LOSS_CURVE_FILE

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def confusion_matrix(
    targets: Sequence[int] | IntArray, predictions: Sequence[int] | IntArray, num_classes: int
) -> IntArray:
    """``matrix[t, p]`` counts the images of true class ``t`` predicted as ``p``."""
    t = np.asarray(targets, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"targets and predictions differ in length: {t.shape} vs {p.shape}")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    # An undefined precision (nothing predicted as the class) or recall (no such images) counts as 0.
    return numerator / denominator if denominator > 0 else 0.0


def metrics_from_confusion(matrix: IntArray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, and their macro and support-weighted means."""
    total = int(matrix.sum())
    per_class: dict[str, dict[str, float]] = {}
    for index, name in enumerate(class_names):
        tp = float(matrix[index, index])
        precision = _ratio(tp, float(matrix[:, index].sum()))
        recall = _ratio(tp, float(matrix[index, :].sum()))
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(matrix[index, :].sum()),
        }
    return {
        "accuracy": _ratio(float(np.trace(matrix)), total),
        "num_images": total,
        "per_class": per_class,
        "macro_avg": _average(per_class, weighted=False),
        "weighted_avg": _average(per_class, weighted=True),
        "confusion_matrix": matrix.tolist(),
    }


def _average(per_class: dict[str, dict[str, float]], *, weighted: bool) -> dict[str, float]:
    rows = list(per_class.values())
    weights = [row["support"] if weighted else 1.0 for row in rows]
    total = sum(weights)
    return {
        key: _ratio(sum(w * row[key] for w, row in zip(weights, rows, strict=True)), total)
        for key in ("precision", "recall", "f1")
    }


def classification_metrics(
    targets: Sequence[int] | IntArray, predictions: Sequence[int] | IntArray, class_names: Sequence[str]
) -> dict[str, Any]:
    """:func:`metrics_from_confusion` of the labels' confusion matrix."""
    return metrics_from_confusion(confusion_matrix(targets, predictions, len(class_names)), class_names)


def calibration_metrics(
    confidences: Sequence[float] | FloatArray, correct: Sequence[bool] | npt.NDArray[np.bool_], bins: int = 15
) -> dict[str, float]:
    """Mean top-1 probability and expected calibration error (Guo et al., 2017: the gap between
    confidence and accuracy averaged over ``bins`` equal-width confidence bins, weighted by their size).

    Faithfulness scores read the model's probabilities (insertion AUC most of all) and so move with how
    confident a model is; the report keeps that next to its accuracy.
    """
    p = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if p.shape != hit.shape:
        raise ValueError(f"confidences and correctness differ in length: {p.shape} vs {hit.shape}")
    if not len(p):
        return {"mean_confidence": 0.0, "expected_calibration_error": 0.0}
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.ceil(p * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = 0.0
    for b in np.unique(index):
        members = index == b
        gap += members.sum() * abs(hit[members].mean() - p[members].mean())
    return {"mean_confidence": float(p.mean()), "expected_calibration_error": float(gap / len(p))}


#: The probability thresholds of a report's risk-coverage table.
RISK_COVERAGE_THRESHOLDS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def risk_coverage(
    confidences: Sequence[float] | FloatArray,
    correct: Sequence[bool] | npt.NDArray[np.bool_],
    thresholds: Sequence[float] = RISK_COVERAGE_THRESHOLDS,
) -> list[dict[str, float]]:
    """For each threshold: the share of photos whose top-1 probability is at least it (answered
    without a person) and the accuracy on those (0 when none is answered)."""
    p = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.bool_)
    rows = []
    for threshold in thresholds:
        answered = p >= threshold
        rows.append(
            {
                "min_probability": float(threshold),
                "coverage": float(answered.mean()) if len(p) else 0.0,
                "answered": int(answered.sum()),
                "accuracy": float(hit[answered].mean()) if answered.any() else 0.0,
            }
        )
    return rows


def plot_risk_coverage(curves: dict[str, Sequence[dict[str, float]]], path: Path, *, title: str = "") -> None:
    """Accuracy on the answered photos against the share answered, one curve of :func:`risk_coverage`
    rows per name (e.g. per data set), each point labelled with its probability threshold."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, rows in curves.items():
        coverage = [row["coverage"] for row in rows if row["answered"]]
        accuracy = [row["accuracy"] for row in rows if row["answered"]]
        (line,) = axes.plot(coverage, accuracy, marker="o", label=name)
        for row in rows:
            if row["answered"]:
                axes.annotate(
                    f"{row['min_probability']:g}",
                    (row["coverage"], row["accuracy"]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=7,
                    color=line.get_color(),
                )
    axes.set_xlabel("coverage (share of photos answered)")
    axes.set_ylabel("accuracy on the answered photos")
    axes.set_xlim(0, 1.05)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    axes.legend()
    _save_png(figure, path)


def _save_png(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def plot_curve(history: Sequence[dict[str, float]], metric: str, path: Path) -> None:
    """Train and validation ``metric`` (``"loss"`` or ``"accuracy"``) per epoch, as in the paper's
    figures 4 and 5."""
    epochs = [int(record["epoch"]) for record in history]
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(epochs, [record[f"train_{metric}"] for record in history], marker=".", label="train")
    axes.plot(epochs, [record[f"val_{metric}"] for record in history], marker=".", label="validation")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend()
    _save_png(figure, path)


def plot_curves(history: Sequence[dict[str, float]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``loss_curve.png`` and ``accuracy_curve.png``; return their paths."""
    loss_path, accuracy_path = out_dir / LOSS_CURVE_FILE, out_dir / ACCURACY_CURVE_FILE
    plot_curve(history, "loss", loss_path)
    plot_curve(history, "accuracy", accuracy_path)
    return loss_path, accuracy_path


def plot_confusion_matrix(matrix: IntArray, class_names: Sequence[str], path: Path) -> None:
    """Counts per (true, predicted) class, with the row-normalised share as the colour."""
    size = max(4.0, 0.8 * len(class_names) + 2)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(class_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for t in ticks:
        for p in ticks:
            colour = "white" if shares[t, p] > 0.5 else "black"
            axes.text(p, t, str(int(matrix[t, p])), ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    _save_png(figure, path)
