"""Atomic writes for text, JSON and image files, and paths out of records that others read.

Checkpoints, job records, manifests, histories, reports and figures are all written through
:func:`atomic_open`, so a killed process never leaves a half-written file behind.
"""

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def _umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Free bytes under which a failed write is taken for a full disk.
DISK_FULL_BYTES = 1 << 20


class DiskFullError(OSError):
    """A write failed because the disk that holds the file is full."""


def _disk_is_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary handle whose contents replace ``path`` only once the block ends without error.

    The data goes to a temporary file in the same folder, is fsynced, then renamed over ``path`` (and
    the rename fsynced), so readers see the old file or the whole new one, even after a kill. A write
    that fails on a full disk raises :class:`DiskFullError` saying so, whatever the writer raised
    (``torch.save`` says only ``unexpected pos``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except Exception as error:
        full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or _disk_is_full(path.parent)
        Path(tmp_name).unlink(missing_ok=True)
        if full and not isinstance(error, DiskFullError):
            message = f"the disk is full: no space left to write {path.name} in {path.parent} ({error})"
            raise DiskFullError(errno.ENOSPC, message) from error
        raise
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_open(path) as handle:
        handle.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (keys in insertion order, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


#: An absolute path's folders: a "/" not inside a word, a relative path or a label, then "name/" parts.
_FOLDERS = re.compile(r"(?<![\w.~>-])/(?:[^/\s,;=:'\"()<>]+/)+")


def constant(replacement: str) -> Callable[[re.Match[str]], str]:
    """A replacement for :func:`re.sub` that is taken as it is, escapes and all."""
    return lambda _: replacement


def redact_paths(text: str, labels: Mapping[str, str]) -> str:
    """``text`` with each folder of ``labels`` named by its label (an empty label: the path becomes
    relative to it) and the folders of any other absolute path left out (its file name stays)."""
    for folder, label in sorted(labels.items(), key=lambda item: len(item[0]), reverse=True):
        folder = re.escape(folder.rstrip("/"))
        # Replaced by functions, so that a label is never read as a pattern's escapes (a client's file
        # name may hold backslashes).
        text = re.sub(folder + "/", constant(f"{label}/" if label else ""), text)
        text = re.sub(folder + r"(?![\w.-])", constant(label or "."), text)
    return _FOLDERS.sub("", text)


def redact(value: Any, labels: Mapping[str, str]) -> Any:
    """:func:`redact_paths` over every string in a JSON-like value."""
    if isinstance(value, str):
        return redact_paths(value, labels)
    if isinstance(value, Mapping):
        return {key: redact(item, labels) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, labels) for item in value]
    return value
