"""What a model version is and how its files are laid out: ``<root>/<name>/v<N>/`` holds the checkpoint,
its record as ``spec.json`` (readable without loading weights) and optionally ``report.json``. The
store that keeps versions (``core.model_store``) and the shipped model, a read-only version of it
(``NAME:builtin``), share these names.
"""

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import ModelSpec, load_checkpoint

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
VERSION_PATTERN = re.compile(r"v(\d+)")
CHECKPOINT_FILE = "model.pt"
#: A version's record (its spec and the weights' sha256); written last, so a folder without it is ignored.
SPEC_FILE = "spec.json"
#: The test report of the run that made a version.
REPORT_FILE = "report.json"
#: Which version served by default, in stores written before the database (read by ``trashcam db import``).
DEFAULT_FILE = "default.json"


class ModelNotFoundError(LookupError):
    """No model (or no such version of it) in the store."""


class DefaultChangedError(Exception):
    """Another change of the default landed first (a rollback must undo the last one, not an earlier)."""


class ModelInUseError(Exception):
    """The version cannot be removed: it is built in, or it is the default."""


#: The version name of the model that ships with the service.
BUILTIN_VERSION = "builtin"
#: Every change of the default, in stores written before the database (read by ``trashcam db import``).
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


#: Names that the API's routes use (``/models/default``), and the default pointer of older stores.
RESERVED_NAMES = frozenset({"default"})


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 of a-z 0-9 _ . - starting with a letter or digit"
        )
    if name in RESERVED_NAMES or name.endswith(".json"):
        raise ValueError(f"invalid model name {name!r}: 'default' and names ending in .json are reserved")
    return name


def builtin_name(path: Path) -> str:
    """A shipped checkpoint's model name: its folder's (``weights/se_resnet50/model.pt``) or its own."""
    return path.parent.name if path.name == CHECKPOINT_FILE else path.stem


@functools.lru_cache(maxsize=4)
def read_builtin(path: str, size: int, mtime_ns: int) -> ModelVersion:
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
