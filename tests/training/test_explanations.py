import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from models import precision
from training.config import DEFAULT_SPLIT
from training.engine import TrainResult
from training.explanations import main, pick_images
from training.split import create_manifest, load_manifest, save_manifest


def test_faithfulness_cli_scores_the_test_split(reference_run: TrainResult, tmp_path: Path) -> None:
    out = tmp_path / "faithfulness.json"
    run = reference_run.out_dir
    manifest_path, checkpoint = str(run / "manifest.json"), str(run / "best.pt")
    args = ["--checkpoint", checkpoint, "--manifest", manifest_path, "--steps", "4", "--out", str(out)]
    assert main(["faithfulness", *args, "--device", "cpu"]) == 0
    scores = json.loads(out.read_text())
    manifest = load_manifest(run / "manifest.json")
    assert scores["images"] == len(manifest.select("test"))
    assert 0 <= scores["average_drop_pct"] <= 100
    assert 0 <= scores["increase_in_confidence_pct"] <= 100
    assert 0 <= scores["deletion_auc"] <= 1
    assert 0 <= scores["insertion_auc"] <= 1


def test_figure_has_a_column_per_image_and_a_row_per_model(
    reference_run: TrainResult, tmp_path: Path
) -> None:
    run = reference_run.out_dir
    manifest = load_manifest(run / "manifest.json")
    chosen = pick_images(manifest, split="test", per_class=1)
    assert [label for _, label in chosen] == sorted({label for _, label in manifest.select("test")})
    out = tmp_path / "figure.png"
    best, final = run / "best.pt", run / "final.pt"
    models = ["--checkpoint", f"best={best}", "--checkpoint", f"final={final}"]
    args = ["--manifest", str(run / "manifest.json"), "--per-class", "1", "--out", str(out), *models]
    assert main(["figure", *args, "--device", "cpu"]) == 0
    width, height = Image.open(out).size
    assert width > height  # six columns, three rows


def test_a_manifest_finds_its_data_set_where_it_has_moved(
    reference_run: TrainResult, reference_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A manifest kept on its own (as in docs/runs/), with the data set copied somewhere else.
    record = tmp_path / "record"
    record.mkdir()
    shutil.copyfile(reference_run.out_dir / "manifest.json", record / "manifest.json")
    moved = tmp_path / "moved"
    shutil.copytree(reference_data, moved)
    out = tmp_path / "figure.png"
    args = ["--manifest", str(record / "manifest.json"), "--per-class", "1", "--out", str(out)]
    checkpoint = ["--checkpoint", f"best={reference_run.out_dir / 'best.pt'}", "--device", "cpu"]
    assert main(["figure", *args, "--data", str(moved), *checkpoint]) == 0
    assert out.is_file()
    assert not (record / "data").exists()

    # A data set that differs from the one split is refused, with a message rather than a traceback.
    first = next(path for path in sorted(moved.rglob("*")) if path.is_file())
    Image.new("RGB", (8, 8), "red").save(first, format="PNG")
    with caplog.at_level("ERROR"):
        assert main(["figure", *args, "--data", str(moved), *checkpoint]) == 2
    assert "differs from the manifest" in caplog.text


def test_faithfulness_under_bf16_scores_close_to_fp32(
    reference_run: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    run = reference_run.out_dir
    common = ["--checkpoint", str(run / "best.pt"), "--manifest", str(run / "manifest.json"), "--steps", "4"]
    scores = {}
    for name, extra in (("fp32", []), ("bf16", ["--amp"])):
        out = tmp_path / f"{name}.json"
        assert main(["faithfulness", *common, *extra, "--device", "cpu", "--out", str(out)]) == 0
        scores[name] = json.loads(out.read_text())
    assert (scores["fp32"]["precision"], scores["bf16"]["precision"]) == ("fp32", "bf16")
    for key in ("deletion_auc", "insertion_auc"):
        assert abs(scores["bf16"][key] - scores["fp32"][key]) < 0.02


def test_a_manifest_of_an_archive_finds_the_archive_where_it_has_moved(
    reference_run: TrainResult, image_folder: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="photos")
    manifest = create_manifest(archive, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT)[0]
    record = tmp_path / "record"
    save_manifest(manifest, record / "manifest.json")
    moved = tmp_path / "elsewhere" / "renamed.tar.gz"
    moved.parent.mkdir()
    archive.rename(moved)
    out = tmp_path / "figure.png"
    args = ["--manifest", str(record / "manifest.json"), "--data", str(moved), "--per-class", "1"]
    checkpoint = ["--checkpoint", f"best={reference_run.out_dir / 'best.pt'}", "--device", "cpu"]
    assert main(["figure", *args, "--out", str(out), *checkpoint]) == 0
    assert out.is_file()
    assert not (record / "data").exists()
