"""The default model folder the service ships: what its files claim must match what it holds."""

import torch

from core.settings import Settings
from models.checkpoint import file_sha256, load_checkpoint
from models.files import read_json
from models.store import SPEC_FILE
from training.export import SUMS_FILE, read_checksums

SHIPPED = Settings().shipped_model_path
FOLDER = SHIPPED.parent


def test_every_file_of_the_shipped_model_matches_its_checksum() -> None:
    sums = read_checksums(FOLDER)
    present = {path.name for path in FOLDER.iterdir() if path.is_file() and path.name != SUMS_FILE}
    assert set(sums) == present
    for name, digest in sums.items():
        assert file_sha256(FOLDER / name) == digest, name


def test_the_shipped_model_is_an_fp16_se_resnet50_under_60_mb_described_by_its_spec() -> None:
    assert SHIPPED.stat().st_size < 60e6
    checkpoint = load_checkpoint(SHIPPED)  # verifies the weights' own digest
    meta = read_json(FOLDER / SPEC_FILE)
    assert checkpoint.spec.arch == "se_resnet50"
    assert checkpoint.spec.to_dict() == meta["spec"]
    assert checkpoint.sha256 == meta["sha256"]
    floating = [t for t in checkpoint.state_dict.values() if t.is_floating_point()]
    assert floating
    assert all(t.dtype == torch.float16 for t in floating)


def test_the_shipped_report_is_the_test_accuracy_its_spec_records() -> None:
    report = read_json(FOLDER / "report.json")
    spec = read_json(FOLDER / SPEC_FILE)["spec"]
    assert report["class_names"] == spec["class_names"]
    assert report["accuracy"] == spec["metrics"]["test_accuracy"]
    assert (FOLDER / "history.json").is_file()
