from training.engine import TrainResult
from training.results import markdown, row


def test_a_finished_run_becomes_a_table_row(reference_run: TrainResult) -> None:
    result = row(reference_run.out_dir)
    assert result["model"] == "simple_cnn"
    assert result["test_accuracy"] == reference_run.test_accuracy
    assert result["best_val_accuracy"] == reference_run.best_val_accuracy
    assert result["epochs"] == "3/3"
    assert result["parameters"] > 0
    assert reference_run.test_accuracy is not None
    table = markdown([result])
    assert table.count("\n") == 3
    assert f"{100 * reference_run.test_accuracy:.2f}%" in table
