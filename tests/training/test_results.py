import json
from pathlib import Path

import pytest

from training.engine import TrainResult
from training.export import export_run
from training.results import (
    calibration_markdown,
    faithfulness_markdown,
    hardware,
    main,
    markdown,
    row,
    sources_markdown,
)


def test_a_finished_run_becomes_a_table_row(reference_run: TrainResult) -> None:
    result = row(reference_run.out_dir)
    assert result["model"] == "simple_cnn"
    assert result["test_accuracy"] == reference_run.test_accuracy
    assert result["best_val_accuracy"] == reference_run.best_val_accuracy
    assert result["epochs"] == "3/3"
    assert result["parameters"] > 0
    assert "threads), fp32" in result["hardware"]
    assert reference_run.test_accuracy is not None
    table = markdown([result])
    assert table.count("\n") == 3
    assert f"{100 * reference_run.test_accuracy:.2f}%" in table


def test_an_exported_model_folder_gives_the_same_row(reference_run: TrainResult, tmp_path: Path) -> None:
    exported = export_run(reference_run.out_dir, tmp_path / "shipped").parent
    (exported / "config.json").unlink()  # as in a folder exported before configs were copied
    assert {**row(exported), "run": "run"} == row(reference_run.out_dir)


def test_hardware_names_each_process_and_its_epochs(tmp_path: Path) -> None:
    assert hardware(tmp_path, 5) == "not recorded"
    path = tmp_path / "environment.json"
    path.write_text(json.dumps([{"first_epoch": 1, "device": "CPU X", "precision": "bf16"}]))
    assert hardware(tmp_path, 5) == "CPU X, bf16"
    path.write_text(
        json.dumps(
            [
                {"first_epoch": 1, "device": "CPU X", "precision": "bf16"},
                {"first_epoch": 3, "device": "GPU Y", "precision": "bf16"},
            ]
        )
    )
    assert hardware(tmp_path, 5) == "CPU X, bf16 (epochs 1-2); GPU Y, bf16 (epochs 3-5)"


def test_faithfulness_files_become_a_table(tmp_path: Path) -> None:
    scores = {
        "arch": "resnet50",
        "method": "gradcam",
        "split": "test",
        "images": 430,
        "average_drop_pct": 12.345,
        "increase_in_confidence_pct": 6.7,
        "deletion_auc": 0.3812,
        "insertion_auc": 0.8299,
    }
    (tmp_path / "resnet50-paper.json").write_text(json.dumps(scores))
    table = faithfulness_markdown([tmp_path / "resnet50-paper.json"])
    assert "| resnet50-paper | resnet50 | gradcam | 430 test | 12.35% | 6.70% | 0.381 | 0.830 |" in table


def test_cli_refuses_a_folder_that_holds_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reference_run: TrainResult
) -> None:
    assert main([str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert main([str(reference_run.out_dir)]) == 0
    assert "simple_cnn" in capsys.readouterr().out


def _source_report(path: Path, split: str, per_source: dict[str, tuple[float, float, int]]) -> Path:
    rows = {
        name: {"accuracy": acc, "macro_recall": recall, "num_images": n, "confusion_matrix": []}
        for name, (acc, recall, n) in per_source.items()
    }
    path.write_text(json.dumps({"split": split, "per_source": rows}))
    return path


def test_the_sources_table_sets_the_held_out_site_apart_from_the_mean(tmp_path: Path) -> None:
    test = _source_report(
        tmp_path / "test.json",
        "test",
        {"trashnet": (0.9, 0.9, 430), "web": (0.5, 0.4, 100), "home": (0.7, 0.6, 80)},
    )
    site = _source_report(tmp_path / "site.json", "holdout", {"sd": (0.3, 0.25, 429)})
    table = sources_markdown([("general", [test, site])]).splitlines()
    assert table[2] == "| trashnet | 430 | 90.00% (90.00%) |"
    assert table[3:5] == ["| home | 80 | 70.00% (60.00%) |", "| web | 100 | 50.00% (40.00%) |"]
    assert table[5] == "| sd (held out) | 429 | 30.00% (25.00%) |"
    assert table[6] == "| mean of home, web |  | 60.00% (50.00%) |"


def test_calibration_tables_and_figure_come_from_the_reports(tmp_path: Path) -> None:
    def report(name: str, accuracy: float, coverage: float) -> Path:
        path = tmp_path / f"{name}.json"
        rows = [
            {"min_probability": 0.0, "coverage": 1.0, "answered": 10, "accuracy": accuracy},
            {"min_probability": 0.5, "coverage": coverage, "answered": 5, "accuracy": 0.9},
        ]
        path.write_text(
            json.dumps(
                {
                    "num_images": 10,
                    "accuracy": accuracy,
                    "temperature": 0.5,
                    "expected_calibration_error": 0.04,
                    "mean_confidence": 0.8,
                    "uncalibrated": {"expected_calibration_error": 0.2, "mean_confidence": 0.6},
                    "unsure": {"share": 0.25, "accuracy_when_sure": 0.95},
                    "risk_coverage": rows,
                }
            )
        )
        return path

    figure = tmp_path / "risk.png"
    text = calibration_markdown(
        [("home", report("home", 0.8, 0.5)), ("site", report("site", 0.4, 0.3))], figure
    )
    assert "| home | 10 | 80.00% | 0.500 | 0.200 -> 0.040 | 0.600 -> 0.800 | 25.0% | 95.00% |" in text
    assert "| 0.5 | 50.0%, 90.00% | 30.0%, 90.00% |" in text
    assert figure.read_bytes().startswith(b"\x89PNG")
    (tmp_path / "old.json").write_text(json.dumps({"num_images": 1}))
    assert main(["--calibration", f"old={tmp_path / 'old.json'}"]) == 2
