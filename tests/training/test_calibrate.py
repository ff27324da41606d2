import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.calibration import Calibration
from models.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from models.ood import OOD_FILE, FeatureBank
from models.similarity import FingerprintIndex
from tests.training.helpers import make_image_folder, tiny_config
from training.calibrate import MIN_PHOTOS, CalibrationError, fit_calibration
from training.cli import main
from training.engine import TrainResult, train
from training.export import export_run, read_checksums
from training.split import load_manifest


def test_fit_calibration_records_what_it_changed() -> None:
    logits = torch.randn(400, 6, generator=torch.Generator().manual_seed(0)) * 4
    generator = torch.Generator().manual_seed(1)
    labels = torch.multinomial((logits / 2.0).softmax(dim=1), 1, generator=generator).squeeze(1)
    calibration = fit_calibration(logits, labels, split="val", min_probability=0.6, energy_quantile=0.9)
    assert calibration.temperature == pytest.approx(2.0, rel=0.15)
    assert calibration.min_probability == 0.6
    assert calibration.energy_quantile == 0.9
    fitted = calibration.fitted_on
    assert fitted is not None
    assert fitted["split"] == "val"
    assert fitted["images"] == 400
    # Overconfident logits: the fit lowers the NLL, the ECE and the mean top-1 probability.
    assert fitted["after"]["nll"] < fitted["before"]["nll"]
    assert fitted["after"]["expected_calibration_error"] < fitted["before"]["expected_calibration_error"]
    assert fitted["after"]["mean_confidence"] < fitted["before"]["mean_confidence"]


def test_fit_calibration_refuses_too_few_photos_or_no_mistakes() -> None:
    logits = torch.eye(6).repeat(3, 1) * 5
    labels = torch.arange(6).repeat(3)
    with pytest.raises(CalibrationError, match="too few"):
        fit_calibration(logits[: MIN_PHOTOS - 1], labels[: MIN_PHOTOS - 1], split="val")
    with pytest.raises(CalibrationError, match="right"):
        fit_calibration(logits, labels, split="val")


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A tiny run with enough validation photos (6 classes x 14 photos: 12) for a fit at the end."""
    root = tmp_path_factory.mktemp("calibrated")
    data = make_image_folder(root / "images", per_class=14)
    return train(tiny_config(data, root / "run", epochs=2))


def test_training_ends_with_a_calibrated_best_checkpoint(calibrated_run: TrainResult) -> None:
    run = calibrated_run.out_dir
    best = load_checkpoint(run / "best.pt")
    calibration = Calibration.from_dict(best.spec.calibration)
    assert calibration.fitted
    assert calibration.fitted_on is not None
    assert calibration.fitted_on["split"] == "val"
    assert calibration.fitted_on["images"] == 12
    assert calibration.max_energy is not None
    report = json.loads((run / "report.json").read_text())
    assert report["temperature"] == pytest.approx(calibration.temperature)
    assert set(report["uncalibrated"]) == {"mean_confidence", "expected_calibration_error"}
    rows = report["risk_coverage"]
    assert rows[0]["min_probability"] == 0.0
    assert rows[0]["coverage"] == 1.0
    assert rows[0]["accuracy"] == pytest.approx(report["accuracy"])
    assert [row["coverage"] for row in rows] == sorted((row["coverage"] for row in rows), reverse=True)
    assert (run / "risk_coverage.png").is_file()
    # ... and with the index of its training photos, for POST /similar.
    index = FingerprintIndex.load(run / "index.npz", model_sha256=best.sha256)
    assert len(index) == len(load_manifest(run / "manifest.json").select("train"))


def test_calibrate_command_changes_the_spec_not_the_weights(
    calibrated_run: TrainResult, tmp_path: Path
) -> None:
    run = calibrated_run.out_dir
    original = load_checkpoint(run / "best.pt")
    # An uncalibrated fp16 copy, as shipped checkpoints are stored.
    fp16 = {name: t.half() if t.is_floating_point() else t for name, t in original.state_dict.items()}
    plain = tmp_path / "plain.pt"
    spec = type(original.spec).from_dict({**original.spec.to_dict(), "calibration": {}})
    sha = save_checkpoint(plain, fp16, spec)
    out = tmp_path / "calibrated.pt"
    args = ["calibrate", f"--checkpoint={plain}", f"--manifest={run / 'manifest.json'}", "--device=cpu"]
    assert main([*args, f"--out={out}", "--min-probability=0.7"]) == 0
    calibrated = load_checkpoint(out)
    assert calibrated.sha256 == sha
    assert all(t.dtype == torch.float16 for t in calibrated.state_dict.values() if t.is_floating_point())
    assert Calibration.from_dict(calibrated.spec.calibration).min_probability == 0.7
    assert load_checkpoint(plain).spec.calibration == {}
    # Without --out the checkpoint is calibrated in place.
    assert main(args) == 0
    assert load_checkpoint(plain).spec.calibration["temperature"] > 0


def test_calibrating_a_shipped_folder_keeps_its_spec_and_checksums_true(
    calibrated_run: TrainResult, tmp_path: Path
) -> None:
    run = calibrated_run.out_dir
    shipped = export_run(run, tmp_path / "shipped")
    args = ["calibrate", f"--checkpoint={shipped}", f"--manifest={run / 'manifest.json'}", "--device=cpu"]
    assert main([*args, "--min-probability=0.8"]) == 0
    meta = json.loads((shipped.parent / "spec.json").read_text())
    assert meta["spec"]["calibration"]["min_probability"] == 0.8
    assert meta["sha256"] == load_checkpoint(shipped).sha256
    for name, digest in read_checksums(shipped.parent).items():
        assert file_sha256(shipped.parent / name) == digest, name


def test_too_few_photos_to_fit_on_are_refused_and_nothing_is_written(
    reference_run: TrainResult, tmp_path: Path
) -> None:
    run = reference_run.out_dir
    assert len(load_manifest(run / "manifest.json").select("val")) < MIN_PHOTOS
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes((run / "best.pt").read_bytes())
    args = ["calibrate", f"--checkpoint={checkpoint}", f"--manifest={run / 'manifest.json'}", "--device=cpu"]
    assert main(args) == 2
    assert checkpoint.read_bytes() == (run / "best.pt").read_bytes()


def test_calibrating_a_stored_version_updates_what_the_store_shows(
    calibrated_run: TrainResult, tmp_path: Path
) -> None:
    from core.model_store import ModelStore

    run = calibrated_run.out_dir
    plain = tmp_path / "plain.pt"
    original = load_checkpoint(run / "best.pt")
    spec = type(original.spec).from_dict({**original.spec.to_dict(), "calibration": {}})
    save_checkpoint(plain, original.state_dict, spec)
    store = ModelStore(tmp_path / "models", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    version = store.add("site", plain)
    assert version.spec.calibration == {}
    args = [
        "calibrate",
        f"--checkpoint={version.path}",
        f"--manifest={run / 'manifest.json'}",
        "--device=cpu",
    ]
    assert main(args) == 0
    again = store.get("site", version.version)
    assert again.spec.calibration["temperature"] > 0
    assert again.sha256 == version.sha256  # the same weights, the same registered version


def test_training_ends_with_a_feature_bank_and_a_rule_chosen_for_the_target(
    calibrated_run: TrainResult,
) -> None:
    run = calibrated_run.out_dir
    best = load_checkpoint(run / "best.pt")
    calibration = Calibration.from_dict(best.spec.calibration)
    bank = FeatureBank.load(run / OOD_FILE, model_sha256=best.sha256)
    assert len(bank) == len(load_manifest(run / "manifest.json").select("train"))
    assert bank.validation is not None
    assert len(bank.validation.confidences) == 12
    assert calibration.max_distance == pytest.approx(float(np.quantile(bank.validation.distances, 0.95)))
    assert calibration.target_accuracy == 0.95
    # The threshold is the one chosen again from the stored validation scores.
    assert calibration.for_target(0.95, bank.validation).min_probability == calibration.min_probability


def test_the_ood_command_stores_a_bank_beside_a_shipped_folder_and_keeps_its_checksums_true(
    calibrated_run: TrainResult, tmp_path: Path
) -> None:
    folder = export_run(calibrated_run.out_dir, tmp_path / "shipped").parent
    # An export's fp16 weights are other weights than the run's: its bank is built for them.
    assert not (folder / OOD_FILE).exists()
    sha = load_checkpoint(folder / "model.pt").sha256
    run_manifest = calibrated_run.out_dir / "manifest.json"
    args = ["ood", f"--checkpoint={folder / 'model.pt'}", f"--manifest={run_manifest}"]
    assert main([*args, "--device=cpu", "--k=3", "--target=0.5"]) == 0
    shipped = load_checkpoint(folder / "model.pt")
    assert shipped.sha256 == sha
    assert Calibration.from_dict(shipped.spec.calibration).target_accuracy == 0.5
    assert FeatureBank.load(folder / OOD_FILE, model_sha256=sha).k == 3
    sums = read_checksums(folder)
    assert sums["model.pt"] == file_sha256(folder / "model.pt")
    assert json.loads((folder / "spec.json").read_text())["spec"]["calibration"]["target_accuracy"] == 0.5
