import json
from collections import Counter
from pathlib import Path

import pytest

from training.config import DEFAULT_SPLIT
from training.data import DataError
from training.engine import TrainResult
from training.split import (
    create_manifest,
    load_manifest,
    manifest_data_root,
    save_manifest,
    split_counts,
    stratified_split,
)

# TrashNet's class sizes, plus small and odd ones.
SIZES = [403, 501, 410, 594, 482, 137, 8, 3, 1]


def _samples(sizes: list[int]) -> list[tuple[str, int]]:
    return [(f"c{label}/img{i}.png", label) for label, size in enumerate(sizes) for i in range(size)]


def test_counts_are_70_13_17_within_rounding() -> None:
    assert split_counts(100, DEFAULT_SPLIT) == (70, 13, 17)
    for size in SIZES:
        train, val, test = split_counts(size, DEFAULT_SPLIT)
        assert train + val + test == size
        assert abs(val - 0.13 * size) <= 0.5
        assert abs(test - 0.17 * size) <= 0.5
        assert abs(train - 0.70 * size) <= 1.0


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    samples = _samples(SIZES)
    names = [f"c{i}" for i in range(len(SIZES))]
    first = stratified_split(samples, names, fractions=DEFAULT_SPLIT, seed=3)
    assert first == stratified_split(samples, names, fractions=DEFAULT_SPLIT, seed=3)
    assert first != stratified_split(samples, names, fractions=DEFAULT_SPLIT, seed=4)
    # Input order does not matter: the assignment is by path.
    reversed_split = stratified_split(samples[::-1], names, fractions=DEFAULT_SPLIT, seed=3)
    assert reversed_split[::-1] == first

    by_split = {
        s: {samples[i][0] for i, name in enumerate(first) if name == s} for s in ("train", "val", "test")
    }
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    assert set().union(*by_split.values()) == {path for path, _ in samples}
    for label, size in enumerate(SIZES):
        counts = Counter(name for (_, lab), name in zip(samples, first, strict=True) if lab == label)
        assert (counts["train"], counts["val"], counts["test"]) == split_counts(size, DEFAULT_SPLIT)


def test_a_class_keeps_its_split_when_another_class_is_added() -> None:
    samples = _samples([50, 60])
    before = stratified_split(samples, ["a", "b"], fractions=DEFAULT_SPLIT, seed=0)
    more = [*samples, *((f"c2/img{i}.png", 2) for i in range(30))]
    after = stratified_split(more, ["a", "b", "c"], fractions=DEFAULT_SPLIT, seed=0)
    assert after[: len(samples)] == before


def test_manifest_round_trip_and_same_split_from_it(image_folder: Path, tmp_path: Path) -> None:
    manifest, root = create_manifest(image_folder, tmp_path / "cache", seed=5, fractions=DEFAULT_SPLIT)
    save_manifest(manifest, tmp_path / "manifest.json")
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["seed"] == 5
    assert data["source"] == str(image_folder.resolve())
    assert data["fractions"] == {"train": 0.70, "val": 0.13, "test": 0.17}
    assert len(data["digest"]) == 64
    assert {item["split"] for item in data["items"]} == {"train", "val", "test"}
    assert all(not Path(item["path"]).is_absolute() for item in data["items"])

    loaded = load_manifest(tmp_path / "manifest.json")
    assert loaded == manifest
    assert manifest_data_root(loaded, tmp_path / "cache") == root
    # Splitting again with the same seed reproduces the manifest exactly.
    again, _ = create_manifest(image_folder, tmp_path / "cache", seed=5, fractions=DEFAULT_SPLIT)
    assert again == manifest
    assert loaded.counts()["test"] == dict.fromkeys(manifest.class_names, 1)


def test_changed_data_is_detected(image_folder: Path, tmp_path: Path) -> None:
    manifest, _ = create_manifest(image_folder, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT)
    test_path, _ = manifest.select("test")[0]
    (image_folder / test_path).write_bytes((image_folder / manifest.select("train")[0][0]).read_bytes())
    with pytest.raises(DataError, match="differs from the manifest"):
        manifest_data_root(manifest, tmp_path / "cache")


def test_run_folder_manifest_holds_the_split(reference_run: TrainResult, reference_data: Path) -> None:
    manifest = load_manifest(reference_run.out_dir / "manifest.json")
    again, _ = create_manifest(
        reference_data, reference_run.out_dir / "unused", seed=7, fractions=DEFAULT_SPLIT
    )
    assert manifest == again
    test_paths = {path for path, _ in manifest.select("test")}
    assert test_paths
    assert not test_paths & {path for path, _ in manifest.select("train")}
