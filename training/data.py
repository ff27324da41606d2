"""Image-folder data sets: finding the class folders, checking images, data sets and loaders.

A data set is a folder with one sub-folder per class (class names are the folder names, sorted), or an
archive of one. The class folders may sit one level down in a single top-level folder, as in
``trashnet-112.tar.gz`` (``dataset-resized-rgb-112/<class>/...``).
"""

import logging
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from models.machine import usable_cores
from training.archive import ensure_extracted, is_archive
from training.seeding import derive_seed

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: Folders that archivers add and that are never classes.
IGNORED_FOLDERS = frozenset({"__MACOSX"})

Transform = Callable[[Image.Image], torch.Tensor]
#: A change made to a sample's image before its transform, knowing the sample's index.
Prepare = Callable[[Image.Image, int], Image.Image]
#: A sample as (path relative to the class root, in POSIX form; label).
Sample = tuple[str, int]


@dataclass(frozen=True)
class Photos:
    """Photos to run a model over: the folder their paths are relative to, their samples (path, label),
    and the class names their labels index (the data set's; a model with other classes has them remapped
    where it loads them)."""

    root: Path
    samples: Sequence[Sample]
    classes: Sequence[str]


@dataclass(frozen=True)
class Loading:
    """How photos are loaded and run: on which device, in batches of how many, with how many loader
    processes (None: as many as the machine allows, :func:`default_workers`)."""

    device: torch.device
    batch_size: int = 64
    workers: int | None = None


class Batches(Protocol):
    """What a training or evaluation pass goes through: a ``DataLoader``, or batches made on the device
    (``training.device_data``); each item starts with the images and their labels."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


class DataError(Exception):
    """A data set cannot be found, read, or does not match what was recorded."""


@dataclass(frozen=True)
class ImageFolder:
    """The readable images under ``root``, and those that could not be decoded (with the reason)."""

    root: Path
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]
    skipped: tuple[tuple[str, str], ...]


def resolve_source(source: str | os.PathLike[str], cache_dir: Path, *, sha256: str | None = None) -> Path:
    """The folder that holds a data set: ``source`` itself, or its extraction into ``cache_dir``."""
    path = Path(source)
    if path.is_dir():
        return path
    if is_archive(path):
        return ensure_extracted(path, cache_dir, sha256=sha256)
    raise DataError(f"{source}: not a folder or a supported archive")


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in IGNORED_FOLDERS


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and _visible(p)
        # Hidden or archiver folders inside a class folder are not part of the class either.
        and all(_visible(parent) for parent in p.relative_to(folder).parents if parent != Path("."))
    )


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _visible(p))


def _has_direct_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _visible(p) for p in folder.iterdir())


def find_class_root(path: Path) -> Path:
    """``path``, or the folder inside it that holds the class folders.

    A folder whose only sub-folder holds no images itself but has sub-folders is a wrapper (as an
    archive's top-level folder usually is), and is stepped into.
    """
    current = path
    while True:
        folders = _subfolders(current)
        if len(folders) == 1 and not _has_direct_images(folders[0]) and _subfolders(folders[0]):
            current = folders[0]
        else:
            return current


def check_class_name(name: str) -> str:
    """``name``, or :class:`DataError` when it holds a control or formatting character: a class name is
    shown in answers, pages and metrics, where a right-to-left override (U+202E) would disguise it."""
    hidden = [char for char in name if unicodedata.category(char) in ("Cc", "Cf")]
    if hidden:
        codes = ", ".join(f"U+{ord(char):04X}" for char in dict.fromkeys(hidden))
        raise DataError(f"class folder {name!r}: its name holds control or formatting characters ({codes})")
    return name


def check_image(path: Path) -> str | None:
    """``None`` if the image decodes completely, else why it does not."""
    try:
        with Image.open(path) as image:
            # load() decodes every pixel: a truncated file passes Image.verify() but fails here.
            image.load()
    # Broken files make Pillow raise many types (OSError, SyntaxError, ValueError, struct.error, ...);
    # whatever it is, the image is unreadable and is reported, not fatal.
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def scan_image_folder(root: Path) -> ImageFolder:
    """List the class folders under ``root`` and their images, skipping (and logging) unreadable ones."""
    class_dirs = [folder for folder in _subfolders(root) if _image_files(folder)]
    if len(class_dirs) < 2:
        raise DataError(f"{root}: expected at least 2 class folders with images, found {len(class_dirs)}")
    for folder in class_dirs:
        check_class_name(folder.name)
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    for label, folder in enumerate(class_dirs):
        for file in _image_files(folder):
            rel = file.relative_to(root).as_posix()
            error = check_image(file)
            if error is None:
                samples.append((rel, label))
            else:
                logger.warning("skipping unreadable image %s: %s", rel, error)
                skipped.append((rel, error))
    return ImageFolder(
        root=root,
        class_names=tuple(folder.name for folder in class_dirs),
        samples=tuple(samples),
        skipped=tuple(skipped),
    )


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images listed by relative path and label, loaded as RGB and transformed.

    An index may be a plain ``int``, or ``(index, seed)`` as yielded by :class:`EpochShuffleSampler`:
    the transform then runs under that seed on a forked generator, so a sample's augmentation does not
    depend on which worker process loads it or on what ran before.
    """

    def __init__(
        self, root: Path, samples: Sequence[Sample], transform: Transform, *, prepare: Prepare | None = None
    ) -> None:
        self.root = root
        self.samples = list(samples)
        self.transform = transform
        self.prepare = prepare

    def _load(self, index: int, rgb: Image.Image) -> torch.Tensor:
        if self.prepare is not None:
            rgb = self.prepare(rgb, index)
        return self.transform(rgb)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        rel, label = self.samples[index]
        with Image.open(self.root / rel) as image:
            rgb = image.convert("RGB")
        if seed is None:
            return self._load(index, rgb), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._load(index, rgb), label


class TaggedDataset(ImageDataset):
    """An :class:`ImageDataset` whose items say whether they come from ``first_tagged`` on: a run's own
    photos, then photos it replays, with one sampler over both. Items are ``(image, label, tagged)``."""

    def __init__(
        self,
        root: Path,
        samples: Sequence[Sample],
        transform: Transform,
        *,
        first_tagged: int,
        prepare: Prepare | None = None,
    ) -> None:
        super().__init__(root, samples, transform, prepare=prepare)
        self.first_tagged = first_tagged

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, bool]:  # type: ignore[override]
        image, label = super().__getitem__(key)
        index = key[0] if isinstance(key, tuple) else key
        return image, label, index >= self.first_tagged


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """A shuffled order and per-sample augmentation seeds that depend only on ``(seed, epoch)``."""

    def __init__(self, size: int, *, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        for index in torch.randperm(self.size, generator=generator).tolist():
            yield index, derive_seed(self.seed, "sample", self.epoch, index)


def balance_weights(
    labels: Sequence[int], sources: Sequence[str], *, class_balance: float, source_balance: float
) -> list[float]:
    """Sampling weight of each sample: ``n_class**-class_balance * n_source**-source_balance``.

    With a balance of 1 every class (or source) is drawn equally often; with 0 the counts do not
    matter; in between (0.5, the square root) small ones count more without repeating a few photos
    over and over.
    """
    class_counts, source_counts = Counter(labels), Counter(sources)
    return [
        class_counts[label] ** -class_balance * source_counts[source] ** -source_balance
        for label, source in zip(labels, sources, strict=True)
    ]


class WeightedEpochSampler(EpochShuffleSampler):
    """``size`` draws with replacement in proportion to ``weights``, with per-draw augmentation seeds;
    both depend only on ``(seed, epoch)``, like :class:`EpochShuffleSampler`'s order."""

    def __init__(self, weights: Sequence[float], *, seed: int, size: int | None = None) -> None:
        super().__init__(len(weights) if size is None else size, seed=seed)
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        draws = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        # A sample drawn twice in an epoch gets a different augmentation each time: seed by draw.
        for position, index in enumerate(draws.tolist()):
            yield index, derive_seed(self.seed, "sample", self.epoch, position)


def default_workers(device: torch.device) -> int:
    """Loader processes for this machine: the CPUs this process may use, at most 8.

    On the CPU one core is left to the training itself, which needs it more than decoding does.
    """
    # Processes of one run on this host (torchrun's LOCAL_WORLD_SIZE) share its cores.
    cpus = max(1, usable_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(8, cpus if device.type == "cuda" else max(1, cpus - 1))


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    device: torch.device,
    workers: int | None = None,
    sampler: EpochShuffleSampler | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A loader with persistent workers (sized to the machine unless ``workers`` is given)."""
    workers = default_workers(device) if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        # The loader draws its workers' base seed from this generator; a private one keeps that draw
        # from consuming the global generator, which would make the model's randomness depend on when
        # the loader was created (and so differ after a resume).
        generator=torch.Generator().manual_seed(0),
    )
