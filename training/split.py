"""The stratified train/val/test split and the manifest that records it.

The split follows the TrashNet authors' 70/13/17 proportions per class (per source and class when the
data set tags its photos with sources, see :func:`read_source_tags`). Photos of a held-out source go to
the ``holdout`` split: never trained on, never used to choose a checkpoint. It is computed once and written
to the run folder as ``manifest.json``; resuming and evaluating read the manifest instead of splitting
again, so test images never reach training and every evaluation sees the same test set. The manifest's
digest covers every listed file's bytes, label and split, so a changed data set is detected.
"""

import csv
import hashlib
import io
import logging
import math
import os
import posixpath
import random
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoint import file_sha256
from models.files import read_json, write_json
from training.data import DataError, ImageFolder, Sample, find_class_root, resolve_source, scan_image_folder

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: The split of photos whose source is held out: evaluated on, never trained or selected on.
HOLDOUT = "holdout"
#: Every split name a manifest item may carry, and what ``select`` accepts besides ``"all"``.
ALL_SPLITS = (*SPLITS, HOLDOUT)
FORMAT = "trashcam.split-manifest"
MIXED_FORMAT = "trashcam.mixed-split-manifest"
VERSION = 1
DATA_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A photo's source when its data set does not tag photos and is the run's only one.
DEFAULT_SOURCE = "data"
#: A CSV at a data set's class root that tags photos with the source they came from.
SOURCE_TAGS_FILE = "manifest.csv"


def split_counts(size: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) counts for one class: val and test rounded half up, train takes the rest."""
    val = min(size, math.floor(size * fractions[1] + 0.5))
    test = min(size - val, math.floor(size * fractions[2] + 0.5))
    return size - val - test, val, test


def stratified_split(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    *,
    fractions: Sequence[float],
    seed: int,
    sources: Sequence[str | None] | None = None,
    holdout: Collection[str] = (),
) -> list[str]:
    """The split name of each sample, shuffled per stratum from ``(seed, stratum)``.

    A stratum is a class (``"<class>"``), or a source's class (``"<source>/<class>"``) when ``sources``
    tags the samples. Seeding by name keeps a stratum's split unchanged when others are added or
    removed. Samples whose source is in ``holdout`` get :data:`HOLDOUT`.
    """
    tags = list(sources) if sources is not None else [None] * len(samples)
    assignment = [""] * len(samples)
    strata: dict[str, list[int]] = {}
    for index, ((_, label), source) in enumerate(zip(samples, tags, strict=True)):
        if source is not None and source in holdout:
            assignment[index] = HOLDOUT
            continue
        key = class_names[label] if source is None else f"{source}/{class_names[label]}"
        strata.setdefault(key, []).append(index)
    for key, members in strata.items():
        members.sort(key=lambda i: samples[i][0])
        random.Random(f"{seed}/{key}").shuffle(members)
        n_train, n_val, _ = split_counts(len(members), fractions)
        for position, index in enumerate(members):
            assignment[index] = (
                "train" if position < n_train else "val" if position < n_train + n_val else "test"
            )
    return assignment


def read_source_tags(root: Path) -> dict[str, str]:
    """Photo path (relative to the class root) -> source tag, from the root's :data:`SOURCE_TAGS_FILE`;
    empty when there is none. A path that starts with a folder that is not one of the root's (the
    archive's top folder, as ``waste-extra2-144/metal/x.jpg``) is read without it."""
    path = root / SOURCE_TAGS_FILE
    if not path.is_file():
        return {}
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise rename the first column.
    tags = parse_source_tags(path.read_text(encoding="utf-8-sig"), str(path))
    folders = {child.name for child in root.iterdir() if child.is_dir()}
    relative: dict[str, str] = {}
    for name, source in tags.items():
        first, _, rest = name.partition("/")
        relative[rest if rest.count("/") >= 1 and first not in folders else name] = source
    return relative


#: The columns a :data:`SOURCE_TAGS_FILE` may name a photo's path by (waste-extra-144 says ``path``,
#: waste-extra2-144 ``file``).
PATH_COLUMNS = ("path", "file")


def parse_source_tags(text: str, where: str = SOURCE_TAGS_FILE) -> dict[str, str]:
    """Photo path, as the file gives it -> source tag, from the text of a :data:`SOURCE_TAGS_FILE`
    (read at ``where``)."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    columns = set(reader.fieldnames or ())
    path_column = next((name for name in PATH_COLUMNS if name in columns), None)
    if path_column is None or "source" not in columns:
        logger.warning(
            "%s: no 'path' (or 'file') and 'source' columns; photos are not tagged by source", where
        )
        return {}
    tags: dict[str, str] = {}
    for row in reader:
        path, source = row[path_column], row["source"]
        if not path or not source:
            continue
        tags[path] = source
    return tags


@dataclass(frozen=True)
class ManifestItem:
    path: str
    label: int
    split: str
    #: The photo's source tag; ``None`` for a data set that does not tag its photos.
    source: str | None = None


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
    holdout: tuple[str, ...] = ()

    def _chosen(self, split: str) -> list[ManifestItem]:
        if split != "all" and split not in ALL_SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {(*ALL_SPLITS, 'all')}")
        # "all" is every image that may be evaluated freely; held-out photos are asked for by name.
        return [
            item for item in self.items if item.split == split or (split == "all" and item.split != HOLDOUT)
        ]

    def select(self, split: str) -> list[Sample]:
        """(path, label) of every image in ``split`` (``"all"``: every image not held out)."""
        return [(item.path, item.label) for item in self._chosen(split)]

    def select_sources(self, split: str, default: str) -> list[str]:
        """The source tag of each image of :meth:`select` (``default`` for untagged photos)."""
        return [default if item.source is None else item.source for item in self._chosen(split)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class (the holdout split only when there is one)."""
        splits = ALL_SPLITS if any(item.split == HOLDOUT for item in self.items) else SPLITS
        table = {split: dict.fromkeys(self.class_names, 0) for split in splits}
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
            **({"holdout": list(self.holdout)} if self.holdout else {}),
            "items": [_item_dict(item) for item in self.items],
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
                    ManifestItem(
                        str(i["path"]),
                        int(i["label"]),
                        str(i["split"]),
                        None if i.get("source") is None else str(i["source"]),
                    )
                    for i in data["items"]
                ),
                skipped=tuple((str(s["path"]), str(s["error"])) for s in data.get("skipped", [])),
                holdout=tuple(str(tag) for tag in data.get("holdout", [])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"malformed manifest: {error!r}") from error


def _item_dict(item: ManifestItem) -> dict[str, Any]:
    data: dict[str, Any] = {"path": item.path, "label": item.label, "split": item.split}
    if item.source is not None:
        data["source"] = item.source
    return data


def compute_digest(root: Path, items: Iterable[ManifestItem]) -> str:
    """sha256 over each item's path, label, split and file digest, in path order.

    Source tags are not part of it: they decide the split, which is.
    """
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
    holdout: Collection[str] = (),
) -> Manifest:
    """Split ``folder``'s readable images (stratified by source when its photos are tagged, with the
    ``holdout`` sources it has set aside) and record the result."""
    tags = read_source_tags(folder.root)
    sources = [tags.get(path) for path, _ in folder.samples] if tags else None
    matched = {source for source in sources or () if source is not None}
    listed_only = sorted((set(holdout) & set(tags.values())) - matched)
    if listed_only:
        # Its photos would be trained on untagged: never hold out less than the tags file says.
        raise DataError(
            f"{SOURCE_TAGS_FILE} lists photos of the held-out sources {listed_only}, but none of its paths "
            f"names a photo of the data set"
        )
    held_out = sorted(set(holdout) & matched)
    splits = stratified_split(
        folder.samples, folder.class_names, fractions=fractions, seed=seed, sources=sources, holdout=holdout
    )
    items = tuple(
        ManifestItem(path, label, split, None if sources is None else sources[index])
        for index, ((path, label), split) in enumerate(zip(folder.samples, splits, strict=True))
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
        holdout=tuple(held_out),
    )


def create_manifest(
    source: str | os.PathLike[str],
    cache_dir: Path,
    *,
    seed: int,
    fractions: tuple[float, float, float],
    holdout: Collection[str] = (),
) -> tuple[Manifest, Path]:
    """Open a data set (folder or archive, extracted into ``cache_dir``), split it; return the
    manifest and the class root folder."""
    source_path = Path(source).resolve()
    base = resolve_source(source_path, cache_dir)
    manifest, class_root = _split_data_set(source_path, base, seed=seed, fractions=fractions, holdout=holdout)
    _check_holdout([DataSetSplit(class_root.name, manifest)], holdout)
    return manifest, class_root


def _split_data_set(
    source_path: Path,
    base: Path,
    *,
    seed: int,
    fractions: tuple[float, float, float],
    holdout: Collection[str],
) -> tuple[Manifest, Path]:
    """The manifest of the data set ``source_path``, found (or extracted) at ``base``; its class root."""
    class_root = find_class_root(base)
    manifest = build_manifest(
        scan_image_folder(class_root),
        source=str(source_path),
        source_sha256=None if source_path.is_dir() else file_sha256(source_path),
        root=class_root.relative_to(base).as_posix(),
        seed=seed,
        fractions=fractions,
        holdout=holdout,
    )
    return manifest, class_root


@dataclass(frozen=True)
class DataSetSplit:
    """One named data set of a mixed run and its own split (its digest is the one it has alone)."""

    name: str
    manifest: Manifest

    @property
    def prefix(self) -> str:
        """Where its class root sits under the mixed run's data folder."""
        return posixpath.normpath(f"{self.name}/{self.manifest.root}")


@dataclass(frozen=True)
class MixedManifest:
    """Several data sets split each on its own and trained on together.

    Each data set keeps exactly the split (and digest) it would have alone, so its test accuracy
    compares with runs on it alone. Paths are relative to the run's data folder, which holds each data
    set under its name; labels index the sorted union of the data sets' classes.
    """

    parts: tuple[DataSetSplit, ...]
    class_names: tuple[str, ...]
    digest: str

    @property
    def source(self) -> str:
        return ", ".join(f"{part.name}={part.manifest.source}" for part in self.parts)

    @property
    def seed(self) -> int:
        return self.parts[0].manifest.seed

    @property
    def holdout(self) -> tuple[str, ...]:
        return tuple(sorted({tag for part in self.parts for tag in part.manifest.holdout}))

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (f"{part.prefix}/{path}", error) for part in self.parts for path, error in part.manifest.skipped
        )

    def select(self, split: str) -> list[Sample]:
        """(path, label) of every image in ``split``, data set by data set."""
        chosen: list[Sample] = []
        for part in self.parts:
            names = part.manifest.class_names
            chosen += [
                (f"{part.prefix}/{path}", self.class_names.index(names[label]))
                for path, label in part.manifest.select(split)
            ]
        return chosen

    def select_sources(self, split: str, default: str | None = None) -> list[str]:
        """The source of each image of :meth:`select`: its tag, or its data set's name."""
        return [tag for part in self.parts for tag in part.manifest.select_sources(split, part.name)]

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for part in self.parts:
            for split, row in part.manifest.counts().items():
                totals = table.setdefault(split, dict.fromkeys(self.class_names, 0))
                for name, count in row.items():
                    totals[name] += count
        return table

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MIXED_FORMAT,
            "version": VERSION,
            "class_names": list(self.class_names),
            "digest": self.digest,
            "counts": self.counts(),
            "parts": [{"name": part.name, **part.manifest.to_dict()} for part in self.parts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MixedManifest":
        if data.get("format") != MIXED_FORMAT or data.get("version") != VERSION:
            raise DataError(f"not a {MIXED_FORMAT} version {VERSION} manifest")
        try:
            parts = tuple(DataSetSplit(str(part["name"]), Manifest.from_dict(part)) for part in data["parts"])
            return cls(parts, tuple(str(name) for name in data["class_names"]), str(data["digest"]))
        except (KeyError, TypeError) as error:
            raise DataError(f"malformed manifest: {error!r}") from error


#: What a run's ``manifest.json`` holds: one data set's split, or several data sets' splits.
AnyManifest = Manifest | MixedManifest


def mixed_digest(parts: Sequence[DataSetSplit], class_names: Sequence[str]) -> str:
    digest = hashlib.sha256("\t".join(class_names).encode())
    for part in parts:
        digest.update(f"\n{part.name}\t{part.manifest.digest}".encode())
    return digest.hexdigest()


def parse_data_sets(values: Sequence[str]) -> list[tuple[str, str]]:
    """``[name=]path`` arguments -> (name, path); a name defaults to the file name without its suffix."""
    named: list[tuple[str, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            path = value
            name = Path(value).name
            for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
                name = name.removesuffix(suffix)
        if not DATA_SET_NAME.fullmatch(name):
            raise ValueError(
                f"data set name {name!r}: 1-64 letters, digits, '.', '_', '-', first a letter or digit"
            )
        named.append((name, path))
    duplicates = sorted({name for name, _ in named if [n for n, _ in named].count(name) > 1})
    if duplicates:
        raise ValueError(f"data set names must differ; repeated: {duplicates}")
    return named


def _data_set_folder(name: str, source: str | os.PathLike[str], cache_dir: Path, sha256: str | None) -> Path:
    """``cache_dir/name``: the data set's extraction, or a link to the data set's folder."""
    target = cache_dir / name
    path = Path(source)
    if path.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() and target.resolve() != path.resolve():
            target.unlink()
        if not target.is_symlink():
            target.symlink_to(path.resolve(), target_is_directory=True)
        return target
    return resolve_source(path, target, sha256=sha256)


def create_mixed_manifest(
    data_sets: Sequence[tuple[str, str]],
    cache_dir: Path,
    *,
    seed: int,
    fractions: tuple[float, float, float],
    holdout: Collection[str] = (),
) -> tuple[MixedManifest, Path]:
    """Split every named data set on its own; return the mixed manifest and its data folder."""
    parts = []
    for name, source in data_sets:
        source_path = Path(source).resolve()
        base = _data_set_folder(name, source_path, cache_dir, None)
        manifest, _ = _split_data_set(source_path, base, seed=seed, fractions=fractions, holdout=holdout)
        parts.append(DataSetSplit(name, manifest))
    _check_holdout(parts, holdout)
    class_names = tuple(sorted({name for part in parts for name in part.manifest.class_names}))
    return MixedManifest(tuple(parts), class_names, mixed_digest(parts, class_names)), cache_dir


def holdout_refused(holdout: Collection[str], found: Collection[str]) -> bool:
    """Whether a hold-out is refused: none of its sources is among those the data sets tag (``found``),
    so a misspelt source would be trained on. Where some are found and others not, the others are only
    missing from this run: a recipe holds out every known site, and a run need not have every site's
    data set."""
    return bool(holdout) and not set(holdout) & set(found)


def _check_holdout(parts: Sequence[DataSetSplit], holdout: Collection[str]) -> None:
    """Refuse a hold-out by :func:`holdout_refused`; log its sources that have no photos here."""
    found = {tag for part in parts for tag in part.manifest.holdout}
    missing = sorted(set(holdout) - found)
    if not missing:
        return
    tags = sorted({item.source for part in parts for item in part.manifest.items if item.source})
    if holdout_refused(holdout, found):
        known = ", ".join(tags) or "none"
        raise DataError(f"no photos of the held-out sources {missing}; the data sets' sources: {known}")
    logger.warning("no photos of the held-out sources %s: nothing of them to hold out", missing)


def manifest_data_root(
    manifest: AnyManifest,
    cache_dir: Path,
    *,
    verify: bool = True,
    source: str | os.PathLike[str] | Mapping[str, str] | None = None,
) -> Path:
    """The folder that a manifest's paths are relative to, checked against its digests when ``verify``.

    ``source`` says where the data set is now, when it has moved since the manifest was written (for a
    mixed manifest, a mapping from data set name to where it is now); an archive must still have the
    recorded sha256, and the files the recorded digest.
    """
    if isinstance(manifest, MixedManifest):
        moved = dict(source) if isinstance(source, Mapping) else {}
        unknown = sorted(set(moved) - {part.name for part in manifest.parts})
        if unknown:
            raise DataError(f"no data sets named {unknown} in the manifest")
        for part in manifest.parts:
            where = moved.get(part.name, part.manifest.source)
            if not Path(where).exists():
                hint = f"say where it is with --data {part.name}=PATH"
                raise DataError(f"data set {part.name!r}: {where} is not here; {hint}")
            base = _data_set_folder(part.name, where, cache_dir, part.manifest.source_sha256)
            if verify:
                _verify(base / part.manifest.root, part.manifest)
        return cache_dir
    if isinstance(source, Mapping):
        raise DataError("a single data set's manifest takes one data path, not named ones")
    located = Path(manifest.source if source is None else source)
    if not located.exists():
        raise DataError(f"the data set {located} is not here; say where it is with --data PATH")
    base = resolve_source(located, cache_dir, sha256=manifest.source_sha256)
    root = base / manifest.root
    if verify:
        _verify(root, manifest)
    return root


def _verify(root: Path, manifest: Manifest) -> None:
    actual = compute_digest(root, manifest.items)
    if actual != manifest.digest:
        raise DataError(
            f"{root}: data set differs from the manifest (digest {actual}, expected {manifest.digest})"
        )


def manifest_and_root(
    path: Path, data: Sequence[str] | None, scratch: Path, *, run_data: Path
) -> tuple[AnyManifest, Path]:
    """A run's manifest and its data: where the run extracted it (``run_data``), or the data sets named
    by ``data`` (``PATH``, or ``NAME=PATH`` for the data sets of a mixed run), extracted to ``scratch``."""
    manifest = load_manifest(path)
    if not data:
        # A run's own extraction when it still has one; else a scratch folder, never beside a manifest
        # that was copied away from its run (as the shipped model's is).
        return manifest, manifest_data_root(manifest, run_data if run_data.is_dir() else scratch)
    if isinstance(manifest, MixedManifest):
        moved = dict(parse_data_sets(data))
        return manifest, manifest_data_root(manifest, scratch, source=moved)
    if len(data) > 1:
        raise DataError("a single data set's manifest takes one --data")
    return manifest, manifest_data_root(manifest, scratch, source=data[0])


def save_manifest(manifest: AnyManifest, path: Path) -> None:
    write_json(path, manifest.to_dict())


def load_manifest(path: Path) -> AnyManifest:
    """A run's manifest, of one data set or of several."""
    if not path.is_file():
        raise DataError(f"{path}: no such manifest")
    data = read_json(path)
    if isinstance(data, dict) and data.get("format") == MIXED_FORMAT:
        return MixedManifest.from_dict(data)
    return Manifest.from_dict(data)
