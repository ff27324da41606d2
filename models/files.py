"""Atomic writes for text, JSON and image files.

Checkpoints and the resume state go through :func:`models.checkpoint.atomic_save`; these helpers do the
same (temporary file, fsync, rename) for JSON and PNG, so a killed run never leaves a half-written
manifest, history or report behind.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (keys in insertion order, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
