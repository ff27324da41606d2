"""A versioned model store on disk: ``<root>/<name>/<version>/model.pt`` plus a default pointer.

Every version folder holds the checkpoint, its spec as ``spec.json`` (readable without loading
weights) and optionally ``report.json``. Versions are claimed with an atomic ``mkdir``, so two
writers never receive the same number, and files are written to a temporary name and renamed, so a
reader never sees half a model.

The model that ships with the service is a read-only version of the store too, ``NAME:builtin``, so
that it can be listed, compared, served again after another was promoted, and never deleted. Every
change of the default is recorded in ``promotions.jsonl`` (when, by whom, from what, to what), which is
what a rollback reads.
"""

import functools
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoint import ModelSpec, load_checkpoint
from models.files import atomic_open, write_json

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_VERSION = re.compile(r"v(\d+)")
CHECKPOINT_FILE = "model.pt"
#: A version's record (its spec and the weights' sha256); written last, so a folder without it is ignored.
SPEC_FILE = "spec.json"
#: The test report of the run that made a version.
REPORT_FILE = "report.json"
#: Which version serves by default.
DEFAULT_FILE = "default.json"


class ModelNotFoundError(LookupError):
    """No model (or no such version of it) in the store."""


class ModelInUseError(Exception):
    """The version cannot be removed: it is built in, or it is the default."""


#: The version name of the model that ships with the service.
BUILTIN_VERSION = "builtin"
PROMOTIONS_FILE = "promotions.jsonl"


@dataclass(frozen=True)
class ModelVersion:
    """One stored model version."""

    name: str
    version: str
    path: Path
    spec: ModelSpec
    sha256: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


#: Names that the store's own files and the API's routes use: the default pointer (``default.json``)
#: and ``/models/default``.
RESERVED_NAMES = frozenset({"default"})


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit"
        )
    if name in RESERVED_NAMES or name.endswith(".json"):
        raise ValueError(f"invalid model name {name!r}: 'default' and names ending in .json are reserved")
    return name


def builtin_name(path: Path) -> str:
    """A shipped checkpoint's model name: its folder's (``weights/se_resnet50/model.pt``) or its own."""
    return path.parent.name if path.name == CHECKPOINT_FILE else path.stem


class ModelStore:
    """Versioned checkpoints under ``root``, and the read-only ``builtin`` checkpoint when given."""

    def __init__(
        self, root: str | os.PathLike[str], *, builtin: str | os.PathLike[str] | None = None
    ) -> None:
        self.root = Path(root)
        self.builtin_path = None if builtin is None else Path(builtin)

    # Reading ---------------------------------------------------------------------------------
    def builtin(self) -> ModelVersion | None:
        """The shipped model as a version (``NAME:builtin``), or None when there is none."""
        path = self.builtin_path
        if path is None or not path.is_file() or not _NAME.fullmatch(builtin_name(path)):
            return None
        stat = path.stat()
        return _read_builtin(str(path), stat.st_size, stat.st_mtime_ns)

    def names(self) -> list[str]:
        stored = (
            {p.name for p in self.root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)}
            if self.root.is_dir()
            else set()
        )
        builtin = self.builtin()
        return sorted(stored | ({builtin.name} if builtin is not None else set()))

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions of ``name``, oldest first (the built-in one before any stored one)."""
        builtin = self.builtin()
        shipped = [builtin] if builtin is not None and builtin.name == name else []
        folder = self.root / name
        if not _NAME.fullmatch(name) or not folder.is_dir():
            return shipped
        found = []
        for entry in folder.iterdir():
            match = _VERSION.fullmatch(entry.name)
            if match and (entry / SPEC_FILE).is_file() and (entry / CHECKPOINT_FILE).is_file():
                found.append((int(match.group(1)), entry))
        return [*shipped, *(self._read(name, entry) for _, entry in sorted(found))]

    def all_versions(self) -> list[ModelVersion]:
        return [version for name in self.names() for version in self.versions(name)]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A version of ``name``: the given one, or the newest."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r}; known: {', '.join(self.names()) or 'none'}")
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        known = ", ".join(v.version for v in versions)
        raise ModelNotFoundError(f"model {name!r} has no version {version!r}; known: {known}")

    def default(self) -> ModelVersion | None:
        pointer = self.root / DEFAULT_FILE
        if not pointer.is_file():
            return None
        data = json.loads(pointer.read_text(encoding="utf-8"))
        try:
            return self.get(str(data["name"]), str(data["version"]))
        except ModelNotFoundError:
            return None

    def _read(self, name: str, folder: Path) -> ModelVersion:
        meta = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
        return ModelVersion(
            name=name,
            version=folder.name,
            path=folder / CHECKPOINT_FILE,
            spec=ModelSpec.from_dict(meta["spec"]),
            sha256=str(meta["sha256"]),
        )

    # Writing ---------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        checkpoint: str | os.PathLike[str],
        *,
        report: dict[str, Any] | None = None,
        extra: Sequence[Path] = (),
    ) -> ModelVersion:
        """Copy a verified checkpoint in as the next version of ``name``, with ``extra`` files that
        describe it (its fingerprint index)."""
        validate_name(name)
        loaded = load_checkpoint(checkpoint)  # refuse a bad file before it enters the store
        for existing in self.versions(name):
            if existing.sha256 == loaded.sha256:
                return existing  # the same weights again (a job run twice): nothing new to store
        folder = self._claim_version(name)
        with open(checkpoint, "rb") as source, atomic_open(folder / CHECKPOINT_FILE) as target:
            shutil.copyfileobj(source, target)
        if report is not None:
            write_json(folder / REPORT_FILE, report)
        for path in extra:
            with open(path, "rb") as source, atomic_open(folder / path.name) as target:
                shutil.copyfileobj(source, target)
        meta = {"spec": loaded.spec.to_dict(), "sha256": loaded.sha256}
        # spec.json is written last: a version folder without it is ignored by readers.
        write_json(folder / SPEC_FILE, meta)
        return self._read(name, folder)

    def set_default(
        self,
        name: str,
        version: str | None = None,
        *,
        by: str | None = None,
        reason: str = "promote",
        previous: str | None = None,
    ) -> ModelVersion:
        """Make a version the default and record the promotion: ``by`` whom (an API key's name),
        ``reason``, and what it replaces (``previous``; default: the store's default before, else the
        built-in model)."""
        chosen = self.get(name, version)
        if previous is None:
            before = self.default() or self.builtin()
            previous = before.ref if before is not None else None
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / DEFAULT_FILE, {"name": chosen.name, "version": chosen.version})
        entry = {"at": time.time(), "by": by, "from": previous, "to": chosen.ref, "reason": reason}
        # One short line appended in one write: concurrent writers never interleave within it.
        with open(self.root / PROMOTIONS_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        return chosen

    def promotions(self) -> list[dict[str, Any]]:
        """Every change of the default, oldest first."""
        path = self.root / PROMOTIONS_FILE
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short (a crash mid-write): the others still hold
        return [entry for entry in entries if isinstance(entry, dict)]

    def delete(self, name: str, version: str) -> ModelVersion:
        """Remove a stored version. The built-in model and the default cannot be removed
        (:class:`ModelInUseError`); an unknown one is :class:`ModelNotFoundError`."""
        chosen = self.get(name, version)
        if chosen.version == BUILTIN_VERSION:
            raise ModelInUseError(f"{chosen.ref} ships with the service and cannot be deleted")
        default = self.default()
        if default is not None and default.ref == chosen.ref:
            raise ModelInUseError(f"{chosen.ref} is the default model: promote another one first")
        # Renamed out of the readers' sight in one step, then removed.
        hidden = chosen.path.parent.with_name(f".deleted-{chosen.version}-{uuid.uuid4().hex[:8]}")
        chosen.path.parent.rename(hidden)
        shutil.rmtree(hidden, ignore_errors=True)
        return chosen

    def _claim_version(self, name: str) -> Path:
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in parent.iterdir() if (m := _VERSION.fullmatch(p.name))]
        number = max(numbers, default=0) + 1
        while True:
            folder = parent / f"v{number}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                number += 1


@functools.lru_cache(maxsize=4)
def _read_builtin(path: str, size: int, mtime_ns: int) -> ModelVersion:
    """The shipped checkpoint's record: ``spec.json`` beside a ``model.pt`` when there is one (as
    ``training.export`` writes it), else read from the checkpoint itself. Cached per file state."""
    checkpoint = Path(path)
    meta_path = checkpoint.with_name(SPEC_FILE)
    if checkpoint.name == CHECKPOINT_FILE and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        spec, sha256 = ModelSpec.from_dict(meta["spec"]), str(meta["sha256"])
    else:
        loaded = load_checkpoint(checkpoint)
        spec, sha256 = loaded.spec, loaded.sha256
    return ModelVersion(builtin_name(checkpoint), BUILTIN_VERSION, checkpoint, spec, sha256)
