"""The device pipeline: photos decoded once into a tensor, augmented in batches, and the runs it trains."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from models.checkpoint import ModelSpec, load_checkpoint
from models.transforms import build_eval_transform
from tests.training.helpers import assert_same_weights, checkpoint_weights, tiny_config, without_timing
from training.config import TrainConfig, make_config
from training.data import EpochShuffleSampler, WeightedEpochSampler, scan_image_folder
from training.device_augment import DeviceAugment, gaussian_blur
from training.device_data import DeviceEvalBatches, DeviceTrainBatches, PhotoTensor, decode_photos
from training.engine import resume, train
from training.progress import Progress, TrainingCancelled

SIZE = 32


def augment_config(**changes: object) -> TrainConfig:
    """A recipe with every random step off unless ``changes`` turns it on."""
    options = {
        "data": "unused",
        "out": "unused",
        "input_size": SIZE,
        "hflip": False,
        "crop_min_scale": None,
        "rotation": 0.0,
        "color_jitter": 0.0,
        "auto_augment": None,
        "random_erasing": 0.0,
        "grayscale": 0.0,
        "blur": 0.0,
        **changes,
    }
    return make_config("paper", **options)


def random_pixels(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_with_every_step_off_a_batch_is_only_normalised_channels_last() -> None:
    pixels = random_pixels(4)
    out = DeviceAugment(augment_config())(pixels, seeded(0))
    assert out.shape == (4, 3, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, normalised(pixels), atol=1e-5, rtol=0)


def test_flips_are_drawn_per_photo_and_mirror_exactly() -> None:
    pixels = random_pixels(1).expand(64, -1, -1, -1).contiguous()
    out = DeviceAugment(augment_config(hflip=True))(pixels, seeded(1))
    plain, mirrored = normalised(pixels[:1]), normalised(pixels[:1]).flip(-1)
    flipped = [bool(torch.allclose(photo, mirrored[0], atol=1e-5)) for photo in out]
    kept = [bool(torch.allclose(photo, plain[0], atol=1e-5)) for photo in out]
    assert all(a != b for a, b in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


def test_crops_differ_per_photo_and_draws_repeat_with_the_seed() -> None:
    augment = DeviceAugment(augment_config(crop_min_scale=0.35, rotation=15.0, hflip=True))
    pixels = random_pixels(1, size=48).expand(8, -1, -1, -1).contiguous()
    first, again, other = augment(pixels, seeded(3)), augment(pixels, seeded(3)), augment(pixels, seeded(4))
    assert first.shape == (8, 3, SIZE, SIZE)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    # The same photo, cropped eight ways.
    assert len({round(float(photo.sum()), 3) for photo in first}) == 8


def test_grayscale_makes_the_chosen_photos_gray() -> None:
    out = DeviceAugment(augment_config(grayscale=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))(
        random_pixels(3), seeded(0)
    )
    torch.testing.assert_close(out[:, 0], out[:, 1])
    torch.testing.assert_close(out[:, 1], out[:, 2])


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_the_batched_blur_is_torchvisions(sigma: float) -> None:
    images = random_pixels(2).float() / 255
    ours = gaussian_blur(images, torch.full((2,), sigma))
    theirs = v2.functional.gaussian_blur(images, kernel_size=[5, 5], sigma=[sigma, sigma])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_blur_draws_a_sigma_per_photo() -> None:
    sigmas = torch.tensor([0.1, 2.0])
    images = random_pixels(1).float().div(255).expand(2, -1, -1, -1)
    out = gaussian_blur(images, sigmas)
    # A small sigma leaves the photo almost as it is; a large one smooths it.
    assert (out[0] - images[0]).abs().mean() < 1e-3 < (out[1] - images[1]).abs().mean()


def test_erasing_zeroes_one_rectangle_of_the_allowed_area_per_photo() -> None:
    pixels = torch.full((32, 3, SIZE, SIZE), 200, dtype=torch.uint8)
    out = DeviceAugment(augment_config(random_erasing=1.0))(pixels, seeded(5))
    for photo in out:
        erased = (photo == 0).all(dim=0)
        rows, cols = erased.any(dim=1).nonzero(), erased.any(dim=0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(erased.sum()) == int(box), "one filled rectangle"
        assert 0.01 * SIZE * SIZE <= int(box) <= 0.4 * SIZE * SIZE


def test_jitter_and_the_policy_keep_shapes_and_change_photos() -> None:
    pixels = random_pixels(16)
    out = DeviceAugment(augment_config(color_jitter=0.4, auto_augment="trivial"))(pixels, seeded(2))
    assert out.shape == (16, 3, SIZE, SIZE)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, normalised(pixels), atol=1e-3)


def test_decoded_photos_are_the_pixels_evaluation_sees(image_folder: Path) -> None:
    folder = scan_image_folder(image_folder)
    samples = folder.samples[:10]
    photos = decode_photos(image_folder, samples, SIZE, workers=0)
    assert photos.pixels.shape == (10, 3, SIZE, SIZE)
    assert photos.pixels.dtype == torch.uint8
    assert photos.labels.tolist() == [label for _, label in samples]
    spec = ModelSpec("simple_cnn", ("a", "b"), SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batches = DeviceEvalBatches(photos, batch_size=4, mean=spec.mean, std=spec.std)
    assert len(batches) == 3
    images = torch.cat([batch for batch, _ in batches])
    transform = build_eval_transform(spec)
    expected = []
    for rel, _ in samples:
        with Image.open(image_folder / rel) as image:
            expected.append(transform(image.convert("RGB")))
    torch.testing.assert_close(images, torch.stack(expected), atol=1e-6, rtol=0)


def test_training_batches_follow_the_sampler_and_repeat_per_epoch() -> None:
    labels = torch.arange(10)
    photos = PhotoTensor(random_pixels(10), labels)
    sampler = WeightedEpochSampler([1.0] * 9 + [5.0], seed=3)
    batches = DeviceTrainBatches(
        photos, sampler, batch_size=4, augment=DeviceAugment(augment_config(hflip=True)), seed=3
    )
    assert len(batches) == 3
    sampler.set_epoch(1)
    drawn = [index for index, _ in sampler]
    first = list(batches)
    assert torch.cat([batch_labels for _, batch_labels in first]).tolist() == drawn
    again = list(batches)
    for (a, _), (b, _) in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    sampler.set_epoch(2)
    assert torch.cat([batch_labels for _, batch_labels in batches]).tolist() != drawn


DEVICE_RUN = {"pipeline": "device", "auto_augment": "trivial", "random_erasing": 0.25, "blur": 0.5}


def test_a_device_pipeline_run_trains_a_servable_model_and_resumes_exactly(
    reference_data: Path, tmp_path: Path
) -> None:
    whole = train(tiny_config(reference_data, tmp_path / "whole", workers=0, **DEVICE_RUN))
    assert whole.status == "completed"
    assert whole.epochs_completed == 3
    checkpoint = load_checkpoint(tmp_path / "whole" / "best.pt")
    assert checkpoint.spec.recipe["pipeline"] == "device"
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert (tmp_path / "whole" / "report.json").is_file()

    def cancel_in_epoch_two(progress: Progress) -> None:
        if progress.epoch == 2 and progress.phase == "train" and progress.step == 2:
            raise TrainingCancelled

    out = tmp_path / "interrupted"
    train(tiny_config(reference_data, out, workers=0, **DEVICE_RUN), callback=cancel_in_epoch_two)
    assert resume(out).status == "completed"
    assert_same_weights(
        checkpoint_weights(out / "final.pt"), checkpoint_weights(tmp_path / "whole" / "final.pt")
    )
    assert without_timing(json.loads((out / "history.json").read_text())) == without_timing(history)


def test_the_device_pipeline_refuses_what_it_cannot_do(reference_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no background paste"):
        tiny_config(reference_data, tmp_path / "run", pipeline="device", paste_background=0.5)
    with pytest.raises(ValueError, match="pipeline"):
        tiny_config(reference_data, tmp_path / "run", pipeline="gpu")


def test_an_unshuffled_sampler_also_feeds_the_device_batches() -> None:
    photos = PhotoTensor(random_pixels(5), torch.arange(5))
    sampler = EpochShuffleSampler(5, seed=0)
    batches = DeviceTrainBatches(
        photos, sampler, batch_size=2, augment=DeviceAugment(augment_config()), seed=0
    )
    assert sorted(torch.cat([labels for _, labels in batches]).tolist()) == [0, 1, 2, 3, 4]
