"""A versioned model store on disk: ``<root>/<name>/<version>/model.pt`` plus a default pointer.

Every version folder holds the checkpoint, its spec as ``spec.json`` (readable without loading
weights) and optionally ``report.json``. Versions are claimed with an atomic ``mkdir``, so two
writers never receive the same number, and files are written to a temporary name and renamed, so a
reader never sees half a model.
"""

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoint import ModelSpec, load_checkpoint
from models.files import atomic_open, write_json

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^v(\d+)$")
CHECKPOINT_FILE = "model.pt"


class ModelNotFoundError(LookupError):
    """No model (or no such version of it) in the store."""


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
    if not _NAME.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit"
        )
    if name in RESERVED_NAMES or name.endswith(".json"):
        raise ValueError(f"invalid model name {name!r}: 'default' and names ending in .json are reserved")
    return name


class ModelStore:
    """Versioned checkpoints under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # Reading ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, name: str) -> list[ModelVersion]:
        folder = self.root / name
        if not _NAME.match(name) or not folder.is_dir():
            return []
        found = []
        for entry in folder.iterdir():
            match = _VERSION.match(entry.name)
            if match and (entry / "spec.json").is_file() and (entry / CHECKPOINT_FILE).is_file():
                found.append((int(match.group(1)), entry))
        return [self._read(name, entry) for _, entry in sorted(found)]

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
        pointer = self.root / "default.json"
        if not pointer.is_file():
            return None
        data = json.loads(pointer.read_text(encoding="utf-8"))
        try:
            return self.get(str(data["name"]), str(data["version"]))
        except ModelNotFoundError:
            return None

    def _read(self, name: str, folder: Path) -> ModelVersion:
        meta = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
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
            write_json(folder / "report.json", report)
        for path in extra:
            with open(path, "rb") as source, atomic_open(folder / path.name) as target:
                shutil.copyfileobj(source, target)
        meta = {"spec": loaded.spec.to_dict(), "sha256": loaded.sha256}
        # spec.json is written last: a version folder without it is ignored by readers.
        write_json(folder / "spec.json", meta)
        return self._read(name, folder)

    def set_default(self, name: str, version: str | None = None) -> ModelVersion:
        chosen = self.get(name, version)
        write_json(self.root / "default.json", {"name": chosen.name, "version": chosen.version})
        return chosen

    def _claim_version(self, name: str) -> Path:
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in parent.iterdir() if (m := _VERSION.match(p.name))]
        number = max(numbers, default=0) + 1
        while True:
            folder = parent / f"v{number}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                number += 1
