"""Photos decoded once into one uint8 tensor on the training device, and the batches made from it.

The loader path (``training.data``) decodes and augments every photo again in every epoch; on a GPU
that is the bottleneck, not the network. Here each split's photos are decoded once, at the network's
input size with the resize that evaluation and serving use (``models.transforms.square_pixels``), and
kept as one ``(N, 3, S, S)`` uint8 tensor on the device (16 thousand photos at 112 px take 0.6 GB).
Training batches follow the run's sampler, so class and source balance and the resumable order are the
loader path's, and are augmented on the device by ``training.device_augment``.
"""

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from models.transforms import PixelScaling, square_pixels
from training.data import EpochShuffleSampler, ImageDataset, Sample
from training.device_augment import DeviceAugment
from training.seeding import derive_seed

#: Photos decoded per loader batch while the tensor is built.
DECODE_BATCH = 256


@dataclass(frozen=True)
class PhotoTensor:
    """A split's photos as ``pixels`` ``(N, 3, S, S)`` uint8 and ``labels`` ``(N,)`` int64."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "PhotoTensor":
        return PhotoTensor(self.pixels.to(device), self.labels.to(device))


def decode_photos(root: Path, samples: Sequence[Sample], size: int, *, workers: int) -> PhotoTensor:
    """Every photo of ``samples`` decoded once, in ``workers`` loader processes (0: this one)."""
    dataset = ImageDataset(root, samples, functools.partial(square_pixels, size=size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=DECODE_BATCH, num_workers=workers)
    pixels = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.int64)
    start = 0
    for batch, batch_labels in loader:
        pixels[start : start + len(batch)] = batch
        labels[start : start + len(batch)] = batch_labels
        start += len(batch)
    return PhotoTensor(pixels, labels)


class DeviceTrainBatches:
    """An epoch of augmented training batches in the sampler's order: ``(images, labels)`` on the device.

    Each batch's draws come from a generator seeded by ``(seed, epoch, batch)``, and the policy's from
    torch's global generator, which the engine reseeds every epoch: a resumed run repeats them.
    """

    def __init__(
        self,
        photos: PhotoTensor,
        sampler: EpochShuffleSampler,
        *,
        batch_size: int,
        augment: DeviceAugment,
        seed: int,
    ) -> None:
        self.photos, self.sampler, self.batch_size = photos, sampler, batch_size
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.photos.pixels.device
        order = torch.tensor([index for index, _ in self.sampler], dtype=torch.int64, device=device)
        generator = torch.Generator(device=device)
        for step, chosen in enumerate(order.split(self.batch_size)):
            generator.manual_seed(derive_seed(self.seed, "device-batch", self.sampler.epoch, step))
            yield self.augment(self.photos.pixels[chosen], generator), self.photos.labels[chosen]


class DeviceEvalBatches:
    """Evaluation batches in order, normalised as ``models.transforms.EvalTransform`` does."""

    def __init__(
        self,
        photos: PhotoTensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.photos, self.batch_size = photos, batch_size
        self.scaling = PixelScaling(mean, std, photos.pixels.device)

    def __len__(self) -> int:
        return math.ceil(len(self.photos) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for pixels, labels in zip(
            self.photos.pixels.split(self.batch_size), self.photos.labels.split(self.batch_size), strict=True
        ):
            images = self.scaling(pixels)
            yield images.contiguous(memory_format=torch.channels_last), labels
