import json
from pathlib import Path

import pytest

from training.engine import TrainResult
from training.export import export_run
from training.results import faithfulness_markdown, hardware, main, markdown, row


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
