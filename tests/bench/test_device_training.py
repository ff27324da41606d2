"""bench.device_training: the packed data sets split as the originals do, and the dry run's record."""

import json
import tarfile
from pathlib import Path

from PIL import Image

from bench import device_training
from tests.training.test_sources import make_tagged_folder
from training.config import DEFAULT_SPLIT
from training.split import create_manifest


def split_by_path(source: Path, cache: Path) -> dict[str, str]:
    manifest, _ = create_manifest(source, cache, seed=5, fractions=DEFAULT_SPLIT, holdout=["sd"])
    return {item.path: item.split for item in manifest.items}


def test_a_packed_data_set_is_squashed_to_the_size_and_splits_as_the_original(tmp_path: Path) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 6, "sd": 3})
    assert (
        device_training.main(
            ["pack", "--data", f"extra={folder}", "--size", "16", "--out", str(tmp_path / "p")]
        )
        == 0
    )
    packed = tmp_path / "p" / "extra.tar.gz"
    with tarfile.open(packed) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    root = tmp_path / "unpacked" / "extra"
    photos = sorted(root.rglob("*.png"))
    assert len(photos) == 6 * 9
    with Image.open(photos[0]) as image:
        assert image.size == (16, 16)
    assert (root / "manifest.csv").read_text() == (folder / "manifest.csv").read_text()
    assert split_by_path(root, tmp_path / "c1") == split_by_path(folder, tmp_path / "c2")


def test_photos_no_larger_than_the_size_are_copied_unchanged(tmp_path: Path) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 2})
    device_training.main(["pack", "--data", f"extra={folder}", "--size", "24", "--out", str(tmp_path / "p")])
    with tarfile.open(tmp_path / "p" / "extra.tar.gz") as archive:
        member = archive.getmember("extra/glass/web__glass0.png")
        copied = archive.extractfile(member)
        assert copied is not None
        assert copied.read() == (folder / "glass" / "web__glass0.png").read_bytes()


def test_the_dry_run_trains_on_the_device_pipeline_and_projects_the_full_run(tmp_path: Path) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 12, "sd": 2, "er": 2})
    record_path = tmp_path / "record.json"
    code = device_training.main(
        [
            "run",
            "--dry-run",
            "--data",
            f"extra={folder}",
            "--out",
            str(tmp_path / "run"),
            "--record",
            str(record_path),
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--project-epochs",
            "10",
        ]
    )
    assert code == 0
    record = json.loads(record_path.read_text())
    assert record["model"] == "simple_cnn"
    assert record["epochs"] == 2
    assert record["command"].startswith("python -m bench.device_training run --dry-run")
    phases = record["phases"]
    assert phases["total_s"] >= phases["setup_s"] + phases["epochs_s"]
    projection = record["projection"]
    assert projection["model"] == "se_resnet50"
    # SE-ResNet-50 at 112 px: about 2 GFLOPs a forward pass (ResNet-50's 4.1 GMACs at 224 px, a quarter
    # of the pixels, two operations a multiply-add), and a training step about three times that.
    assert 1.8e9 < projection["flops_per_photo"]["forward"] < 2.5e9
    assert 2.5 < projection["flops_per_photo"]["train"] / projection["flops_per_photo"]["forward"] < 3.5
    # The held-out sites are neither trained nor validated on.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["pipeline"] == "device"
    assert config["holdout_sources"] == ["sd", "er"]
    train_photos = projection["photos"]["train"]
    expected_s = (
        10
        * (
            train_photos * projection["flops_per_photo"]["train"]
            + projection["photos"]["val"] * projection["flops_per_photo"]["forward"]
        )
        / (150.0 * 1e12)
    )
    assert abs(projection["model_s_at_assumed_rate"] - expected_s) < 1e-9
