import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import file_sha256, load_checkpoint, load_model
from models.files import redact
from training.cli import main as evaluate_main
from training.engine import TrainResult
from training.export import copy_record, export_run, read_checksums, record_labels, run_checkpoint


def test_export_writes_fp16_weights_with_spec_report_and_checksums(
    reference_run: TrainResult, tmp_path: Path
) -> None:
    out = export_run(reference_run.out_dir, tmp_path / "shipped").parent
    shipped = load_checkpoint(out / "model.pt")
    original = load_checkpoint(reference_run.out_dir / "best.pt")
    # The same spec, with the folders of the training machine left out of it.
    assert shipped.spec.to_dict() == redact(original.spec.to_dict(), record_labels())
    assert str(reference_run.out_dir.parent) not in json.dumps(shipped.spec.to_dict())
    assert all(t.dtype == torch.float16 for t in shipped.state_dict.values() if t.is_floating_point())
    assert (out / "report.json").is_file()
    sums = read_checksums(out)
    assert sums["model.pt"] == file_sha256(out / "model.pt")
    assert set(sums) >= {"model.pt", "spec.json", "report.json"}
    model, _ = load_model(out / "model.pt")
    reference, _ = load_model(reference_run.out_dir / "best.pt")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), atol=2e-2, rtol=2e-2)


def test_the_record_of_a_run_is_copied_without_weights(reference_run: TrainResult, tmp_path: Path) -> None:
    copied = copy_record(reference_run.out_dir, tmp_path / "record")
    names = {path.name for path in copied}
    assert names >= {"config.json", "manifest.json", "environment.json", "history.json", "report.json"}
    assert not list((tmp_path / "record").glob("*.pt"))
    for path in copied:
        original = reference_run.out_dir / path.name
        if path.suffix == ".json":
            # Paths relative to the project; the training machine's other folders left out.
            assert json.loads(path.read_text()) == redact(json.loads(original.read_text()), record_labels())
            assert str(tmp_path.parent) not in path.read_text()
        else:
            assert path.read_bytes() == original.read_bytes()


def test_exporting_the_final_checkpoint_leaves_out_the_report_of_the_best(
    reference_run: TrainResult, tmp_path: Path
) -> None:
    out = export_run(reference_run.out_dir, tmp_path / "final", checkpoint="final.pt").parent
    assert (out / "history.json").is_file()
    assert not (out / "report.json").exists()
    assert not (out / "confusion_matrix.png").exists()


def test_the_last_epochs_weights_export_from_the_resume_file(
    reference_run: TrainResult, tmp_path: Path
) -> None:
    last = run_checkpoint(reference_run.out_dir, "resume.pt")
    final = load_checkpoint(reference_run.out_dir / "final.pt")
    assert last.state_dict.keys() == final.state_dict.keys()
    assert all(torch.equal(last.state_dict[name], final.state_dict[name]) for name in last.state_dict)
    assert last.spec.metrics["epoch"] == final.spec.metrics["epoch"]
    out = export_run(reference_run.out_dir, tmp_path / "last", checkpoint="resume.pt")
    assert load_checkpoint(out).spec.metrics["epoch"] == final.spec.metrics["epoch"]
    assert not (out.parent / "report.json").exists()


def test_a_checkpoint_other_than_the_best_exports_with_its_own_test_report(
    reference_run: TrainResult, tmp_path: Path
) -> None:
    run = reference_run.out_dir
    report_dir = tmp_path / "final-test"
    argv = ["evaluate", "--checkpoint", str(run / "final.pt"), "--manifest", str(run / "manifest.json")]
    assert evaluate_main([*argv, "--split", "test", "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    out = export_run(run, tmp_path / "final", checkpoint="final.pt", report=report_dir).parent
    shipped = json.loads((out / "report.json").read_text())
    assert shipped["accuracy"] == report["accuracy"]
    assert load_checkpoint(out / "model.pt").spec.metrics["test_accuracy"] == report["accuracy"]
    assert (out / "confusion_matrix.png").is_file()
    assert "report.json" in read_checksums(out)

    report["checkpoint_sha256"] = "0" * 64
    (report_dir / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="report of other weights"):
        export_run(run, tmp_path / "other", checkpoint="final.pt", report=report_dir)
