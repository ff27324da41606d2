"""The stratified train/val/test split and the manifest that records it.

The split follows the TrashNet authors' 70/13/17 proportions per class. It is computed once and written
to the run folder as ``manifest.json``; resuming and evaluating read the manifest instead of splitting
again, so test images never reach training and every evaluation sees the same test set. The manifest's
digest covers every listed file's bytes, label and split, so a changed data set is detected.
"""

import hashlib
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoint import file_sha256
from models.files import read_json, write_json
from training.data import DataError, ImageFolder, Sample, find_class_root, resolve_source, scan_image_folder

SPLITS = ("train", "val", "test")
FORMAT = "trashcam.split-manifest"
VERSION = 1


def split_counts(size: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) counts for one class: val and test rounded half up, train takes the rest."""
    val = min(size, math.floor(size * fractions[1] + 0.5))
    test = min(size - val, math.floor(size * fractions[2] + 0.5))
    return size - val - test, val, test


def stratified_split(
    samples: Sequence[Sample], class_names: Sequence[str], *, fractions: Sequence[float], seed: int
) -> list[str]:
    """The split name of each sample, shuffled per class from ``(seed, class name)``.

    Seeding by class name keeps a class's split unchanged when other classes are added or removed.
    """
    assignment = [""] * len(samples)
    for label, name in enumerate(class_names):
        members = sorted(
            (i for i, (_, lab) in enumerate(samples) if lab == label), key=lambda i: samples[i][0]
        )
        random.Random(f"{seed}/{name}").shuffle(members)
        n_train, n_val, _ = split_counts(len(members), fractions)
        for position, index in enumerate(members):
            assignment[index] = (
                "train" if position < n_train else "val" if position < n_train + n_val else "test"
            )
    return assignment


@dataclass(frozen=True)
class ManifestItem:
    path: str
    label: int
    split: str


@dataclass(frozen=True)
class Manifest:
    """A data set's split: where it came from, its classes, seed, and every image's split."""

    source: str
    source_sha256: str | None
    root: str
    class_names: tuple[str, ...]
    seed: int
    fractions: tuple[float, float, float]
    digest: str
    items: tuple[ManifestItem, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def select(self, split: str) -> list[Sample]:
        """(path, label) of every image in ``split`` (``"all"`` for every image)."""
        if split != "all" and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {(*SPLITS, 'all')}")
        return [(item.path, item.label) for item in self.items if split in ("all", item.split)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        table = {split: dict.fromkeys(self.class_names, 0) for split in SPLITS}
        for item in self.items:
            table[item.split][self.class_names[item.label]] += 1
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "root": self.root,
            "class_names": list(self.class_names),
            "seed": self.seed,
            "fractions": dict(zip(SPLITS, self.fractions, strict=True)),
            "digest": self.digest,
            "counts": self.counts(),
            "skipped": [{"path": path, "error": error} for path, error in self.skipped],
            "items": [{"path": i.path, "label": i.label, "split": i.split} for i in self.items],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise DataError(f"not a {FORMAT} version {VERSION} manifest")
        try:
            fractions = tuple(float(data["fractions"][split]) for split in SPLITS)
            return cls(
                source=str(data["source"]),
                source_sha256=data.get("source_sha256"),
                root=str(data["root"]),
                class_names=tuple(str(name) for name in data["class_names"]),
                seed=int(data["seed"]),
                fractions=(fractions[0], fractions[1], fractions[2]),
                digest=str(data["digest"]),
                items=tuple(
                    ManifestItem(str(i["path"]), int(i["label"]), str(i["split"])) for i in data["items"]
                ),
                skipped=tuple((str(s["path"]), str(s["error"])) for s in data.get("skipped", [])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"malformed manifest: {error!r}") from error


def compute_digest(root: Path, items: Iterable[ManifestItem]) -> str:
    """sha256 over each item's path, label, split and file digest, in path order."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.path):
        path = root / item.path
        if not path.is_file():
            raise DataError(f"{path}: listed in the manifest but missing")
        digest.update(f"{item.path}\t{item.label}\t{item.split}\t{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def build_manifest(
    folder: ImageFolder,
    *,
    source: str,
    source_sha256: str | None,
    root: str,
    seed: int,
    fractions: tuple[float, float, float],
) -> Manifest:
    """Split ``folder``'s readable images and record the result."""
    splits = stratified_split(folder.samples, folder.class_names, fractions=fractions, seed=seed)
    items = tuple(
        ManifestItem(path, label, split) for (path, label), split in zip(folder.samples, splits, strict=True)
    )
    return Manifest(
        source=source,
        source_sha256=source_sha256,
        root=root,
        class_names=folder.class_names,
        seed=seed,
        fractions=fractions,
        digest=compute_digest(folder.root, items),
        items=items,
        skipped=folder.skipped,
    )


def create_manifest(
    source: str | os.PathLike[str], cache_dir: Path, *, seed: int, fractions: tuple[float, float, float]
) -> tuple[Manifest, Path]:
    """Open a data set (folder or archive, extracted into ``cache_dir``), split it; return the
    manifest and the class root folder."""
    source_path = Path(source).resolve()
    base = resolve_source(source_path, cache_dir)
    class_root = find_class_root(base)
    folder = scan_image_folder(class_root)
    manifest = build_manifest(
        folder,
        source=str(source_path),
        source_sha256=None if source_path.is_dir() else file_sha256(source_path),
        root=class_root.relative_to(base).as_posix(),
        seed=seed,
        fractions=fractions,
    )
    return manifest, class_root


def manifest_data_root(
    manifest: Manifest, cache_dir: Path, *, verify: bool = True, source: str | os.PathLike[str] | None = None
) -> Path:
    """The class root folder of a manifest's data set, checked against its digest when ``verify``.

    ``source`` says where the data set is now, when it has moved since the manifest was written; an
    archive must still have the recorded sha256, and the files the recorded digest.
    """
    base = resolve_source(
        manifest.source if source is None else source, cache_dir, sha256=manifest.source_sha256
    )
    root = base / manifest.root
    if verify:
        actual = compute_digest(root, manifest.items)
        if actual != manifest.digest:
            raise DataError(
                f"{root}: data set differs from the manifest (digest {actual}, expected {manifest.digest})"
            )
    return root


def save_manifest(manifest: Manifest, path: Path) -> None:
    write_json(path, manifest.to_dict())


def load_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise DataError(f"{path}: no such manifest")
    return Manifest.from_dict(read_json(path))
