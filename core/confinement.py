"""Data sets under the data root stay under it: checked when a job is submitted, and again when a worker
opens them, since a link may have changed in between."""

import os
from collections.abc import Sequence
from pathlib import Path


class DataOutsideRootError(ValueError):
    """A data set, or a link inside one, leads outside the data root."""


def links_out(folder: Path, root: Path) -> list[str]:
    """The links inside ``folder`` (relative to it) that lead outside ``root``; links that stay inside are
    fine. Links to folders are listed, never entered."""
    escaping = []
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            path = Path(parent) / name
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                escaping.append(path.relative_to(folder).as_posix())
    return sorted(escaping)


def check_confined(paths: Sequence[str], root: Path) -> None:
    """Raise :class:`DataOutsideRootError` when one of ``paths`` that lies under ``root`` as written now
    resolves outside it, or holds links that do (paths elsewhere, such as a job's own uploads, are not
    the data root's to check)."""
    root = root.resolve()
    for given in paths:
        path = Path(given)
        if not path.is_absolute() or not path.is_relative_to(root):
            continue
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise DataOutsideRootError(f"{path.relative_to(root)} now leads outside the data root")
        if resolved.is_dir() and (escaping := links_out(resolved, root)):
            raise DataOutsideRootError(
                f"{path.relative_to(root)} now holds links that lead outside the data root: "
                f"{', '.join(escaping[:5])}"
            )
