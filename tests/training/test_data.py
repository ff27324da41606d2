import logging
from pathlib import Path

import pytest
import torch

from models.files import read_json
from tests.training.helpers import CLASS_NAMES, make_image_folder, tiny_config, write_broken_images
from training.augment import build_batch_mix, build_train_transform
from training.data import DataError, EpochShuffleSampler, ImageDataset, find_class_root, scan_image_folder
from training.engine import TrainResult
from training.split import Manifest, load_manifest


def test_unreadable_images_are_skipped_and_logged(
    image_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = write_broken_images(image_folder / "metal")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        folder = scan_image_folder(image_folder)
    assert folder.class_names == CLASS_NAMES
    assert len(folder.samples) == 48
    assert [path for path, _ in folder.skipped] == [f"metal/{name}" for name in broken]
    assert all(error for _, error in folder.skipped)
    assert all(f"metal/{name}" in caplog.text for name in broken)


def test_unreadable_images_are_listed_in_the_manifest_and_report(reference_run: TrainResult) -> None:
    expected = {"glass/garbage.jpg", "glass/truncated.png"}
    manifest = load_manifest(reference_run.out_dir / "manifest.json")
    assert isinstance(manifest, Manifest)
    assert {path for path, _ in manifest.skipped} == expected
    assert not expected & {item.path for item in manifest.items}
    report = read_json(reference_run.out_dir / "report.json")
    assert {entry["path"] for entry in report["skipped_images"]} == expected


def test_class_root_is_found_inside_wrapper_folders(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "outer" / "inner", per_class=1)
    (tmp_path / "outer" / "__MACOSX").mkdir()
    (tmp_path / "outer" / ".hidden").mkdir()
    assert find_class_root(tmp_path) == tmp_path / "outer" / "inner"


def test_a_folder_without_classes_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.txt").write_text("no images")
    with pytest.raises(DataError, match="at least 2 class folders"):
        scan_image_folder(tmp_path)


def test_sampler_depends_only_on_seed_and_epoch() -> None:
    sampler = EpochShuffleSampler(20, seed=1)
    sampler.set_epoch(3)
    first = list(sampler)
    torch.manual_seed(123)  # the global generator must not matter
    assert list(sampler) == first
    assert sorted(index for index, _ in first) == list(range(20))
    sampler.set_epoch(4)
    assert list(sampler) != first
    assert list(EpochShuffleSampler(20, seed=2)) != list(EpochShuffleSampler(20, seed=1))


def test_augmentation_is_reproduced_by_the_sample_seed(image_folder: Path, tmp_path: Path) -> None:
    config = tiny_config(image_folder, tmp_path / "run")
    dataset = ImageDataset(image_folder, [("glass/glass0.png", 1)], build_train_transform(config))
    image, label = dataset[(0, 11)]
    assert image.shape == (3, 32, 32)
    assert label == 1
    state = torch.get_rng_state()
    torch.manual_seed(99)
    assert torch.equal(dataset[(0, 11)][0], image)
    assert not torch.equal(dataset[(0, 12)][0], image)
    # The sample seed runs on a forked generator: the global one is left as it was.
    torch.manual_seed(99)
    before = torch.get_rng_state()
    dataset[(0, 11)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.set_rng_state(state)


def test_policy_and_erasing_keep_the_shape_and_the_sample_seed(image_folder: Path, tmp_path: Path) -> None:
    for policy in ("trivial", "rand"):
        config = tiny_config(image_folder, tmp_path / "run", auto_augment=policy, random_erasing=1.0)
        dataset = ImageDataset(image_folder, [("glass/glass0.png", 1)], build_train_transform(config))
        image, _ = dataset[(0, 5)]
        assert image.shape == (3, 32, 32)
        assert torch.equal(dataset[(0, 5)][0], image)
        plain = ImageDataset(
            image_folder,
            [("glass/glass0.png", 1)],
            build_train_transform(tiny_config(image_folder, tmp_path)),
        )
        # Erasing with probability 1 changes the image that the same seed gives without it.
        assert not torch.equal(plain[(0, 5)][0], image)


def test_batch_mixing_turns_labels_into_class_probabilities(image_folder: Path, tmp_path: Path) -> None:
    assert build_batch_mix(tiny_config(image_folder, tmp_path), 6) is None
    images = torch.randn(8, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    for alphas in ({"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}):
        mix = build_batch_mix(tiny_config(image_folder, tmp_path, **alphas), 6)
        assert mix is not None
        torch.manual_seed(0)
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape
        assert targets.shape == (8, 6)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
        # Each image is mixed with its neighbour in the batch: only their two classes carry weight.
        own = torch.nn.functional.one_hot(labels, 6).float()
        assert float((targets * (1 - (own + own.roll(1, dims=0)).clamp(max=1))).abs().sum()) == 0
        assert not torch.equal(targets, own)
        torch.manual_seed(0)
        again, same_targets = mix(images, labels)
        assert torch.equal(again, mixed)
        assert torch.equal(same_targets, targets)


def test_a_class_folder_whose_name_hides_characters_is_refused(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "photos", per_class=2)
    (root / "glass").rename(root / "gla\u202ess")
    with pytest.raises(DataError, match=r"U\+202E"):
        scan_image_folder(root)
