"""Safe extraction of data-set archives (``.tar.gz``/``.tgz``/``.tar`` and ``.zip``).

Every member is checked before anything is written: absolute names, ``..`` that would climb out of the
target, and links pointing outside it are refused; the total uncompressed size and the number of files
are capped (also while streaming, since a zip may under-declare its sizes). Only regular files and
folders are extracted; other members (links that stay inside, devices, fifos) are skipped and logged.
Extraction goes to a temporary sibling folder that is renamed into place, so a killed extraction never
looks complete.
"""

import logging
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Collection
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

from models.checkpoint import file_sha256
from models.files import read_json, write_json

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DEFAULT_MAX_BYTES = 8 << 30
DEFAULT_MAX_FILES = 200_000
#: Written last into an extraction folder; it names the archive digest the folder holds.
MARKER = ".trashcam-extracted.json"
_CHUNK = 1 << 20
#: The size below which an archive's expansion ratio is measured as if it were this large.
RATIO_FLOOR = 1 << 20


#: What reading a damaged archive raises: besides the formats' own errors, a corrupt deflate or xz
#: stream, an encrypted zip member (RuntimeError) and an unknown compression method.
UNREADABLE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    RuntimeError,
    NotImplementedError,
)


class ArchiveError(Exception):
    """An archive is unsafe, too large, or unreadable."""


class ArchiveTooLargeError(ArchiveError):
    """An archive holds more files or bytes than allowed (a size or file-count bomb)."""


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a supported archive format (by its suffix)."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def safe_member_path(name: str) -> PurePosixPath:
    """The member's path relative to the target, or :class:`ArchiveError` if it could escape it."""
    # Zip tools on Windows write backslashes; treat them as separators so they cannot hide a "..".
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise ArchiveError(f"absolute path in archive: {name!r}")
    parts = [part for part in PurePosixPath(normalized).parts if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"path escapes the target folder: {name!r}")
    # Folders name classes, shown in answers and pages: no character that hides or reorders text.
    for folder in parts[:-1]:
        hidden = [char for char in folder if unicodedata.category(char) in ("Cc", "Cf")]
        if hidden:
            codes = ", ".join(f"U+{ord(char):04X}" for char in dict.fromkeys(hidden))
            raise ArchiveError(f"folder {folder!r} holds control or formatting characters ({codes})")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _link_escapes(member_path: PurePosixPath, target: str, *, hard: bool) -> bool:
    if target.startswith("/"):
        return True
    # A symlink resolves against its own folder, a hard link against the archive root.
    base = "" if hard else str(member_path.parent)
    resolved = posixpath.normpath(posixpath.join(base, target.replace("\\", "/")))
    return resolved == ".." or resolved.startswith("../")


class _Budget:
    """Counts files and bytes against the caps."""

    def __init__(self, max_bytes: int, max_files: int, max_ratio: float | None = None, size: int = 0) -> None:
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes, self.files = 0, 0
        # Photos hardly compress: an archive that expands far past its own size is a bomb. Tiny archives
        # are measured as if they were RATIO_FLOOR bytes, so a small text file of zeros passes.
        self.max_ratio = max_ratio
        self.ratio_cap = None if max_ratio is None else int(max_ratio * max(size, RATIO_FLOOR))

    def add_file(self, declared_size: int = 0) -> None:
        """Count one file; refuse it early if its declared size alone would break the cap."""
        self.files += 1
        if self.files > self.max_files:
            raise ArchiveTooLargeError(f"archive holds more than {self.max_files} files")
        if self.bytes + declared_size > self.max_bytes:
            raise ArchiveTooLargeError(f"archive expands to more than {self.max_bytes} bytes")

    def add_bytes(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise ArchiveTooLargeError(f"archive expands to more than {self.max_bytes} bytes")
        if self.ratio_cap is not None and self.bytes > self.ratio_cap:
            raise ArchiveTooLargeError(
                f"archive expands to more than {self.max_ratio:g} times its own size (a compression bomb)"
            )


def _copy_capped(source: IO[bytes], dest: Path, budget: _Budget) -> None:
    with open(dest, "wb") as out:
        while chunk := source.read(_CHUNK):
            budget.add_bytes(len(chunk))
            out.write(chunk)


def _extract_tar(archive: Path, target: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            rel = safe_member_path(member.name)
            if member.issym() or member.islnk():
                if _link_escapes(rel, member.linkname, hard=member.islnk()):
                    raise ArchiveError(
                        f"link escapes the target folder: {member.name!r} -> {member.linkname!r}"
                    )
                logger.warning("skipping link in archive: %s", member.name)
            elif member.isdir():
                (target / rel).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                budget.add_file(member.size)
                handle = tar.extractfile(member)
                if handle is None:
                    raise ArchiveError(f"cannot read archive member {member.name!r}")
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                with handle:
                    _copy_capped(handle, target / rel, budget)
            else:
                logger.warning("skipping special file in archive: %s", member.name)


def _extract_zip(archive: Path, target: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = safe_member_path(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                link_target = zf.read(info).decode("utf-8", errors="replace")
                if _link_escapes(rel, link_target, hard=False):
                    raise ArchiveError(
                        f"link escapes the target folder: {info.filename!r} -> {link_target!r}"
                    )
                logger.warning("skipping link in archive: %s", info.filename)
            elif info.is_dir():
                (target / rel).mkdir(parents=True, exist_ok=True)
            else:
                # Declared zip sizes can lie; _copy_capped counts the bytes actually written.
                budget.add_file()
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as handle:
                    _copy_capped(handle, target / rel, budget)


class ArchiveContents(NamedTuple):
    files: int
    photos: int


def check_archive(
    archive: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float | None = None,
    photo_suffixes: Collection[str] = (),
) -> ArchiveContents:
    """Vet ``archive`` without extracting it: member paths, links, file count and declared sizes.

    Returns how many files it holds, and how many of them are named as photos (end with one of
    ``photo_suffixes``, in lower case). Raises :class:`ArchiveTooLargeError` for a size or file-count bomb
    and :class:`ArchiveError` for anything unsafe or unreadable. Extraction checks again while
    streaming, since a zip can under-declare its sizes.
    """
    archive = Path(archive)
    budget = _Budget(max_bytes, max_files, max_ratio, archive.stat().st_size if archive.is_file() else 0)
    named_as_photos = 0
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = safe_member_path(info.filename)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        link_target = zf.read(info).decode("utf-8", errors="replace")
                        if _link_escapes(rel, link_target, hard=False):
                            raise ArchiveError(f"link escapes the target folder: {info.filename!r}")
                    elif not info.is_dir():
                        budget.add_file(info.file_size)
                        budget.add_bytes(info.file_size)
                        named_as_photos += Path(rel).suffix.lower() in photo_suffixes
        elif is_archive(archive):
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    rel = safe_member_path(member.name)
                    if (member.issym() or member.islnk()) and _link_escapes(
                        rel, member.linkname, hard=member.islnk()
                    ):
                        raise ArchiveError(f"link escapes the target folder: {member.name!r}")
                    if member.isfile():
                        budget.add_file(member.size)
                        budget.add_bytes(member.size)
                        named_as_photos += Path(rel).suffix.lower() in photo_suffixes
        else:
            raise ArchiveError(
                f"{archive.name}: unsupported archive type (expected {', '.join(ARCHIVE_SUFFIXES)})"
            )
    except UNREADABLE as error:
        raise ArchiveError(f"{archive.name}: unreadable archive: {error}") from error
    return ArchiveContents(budget.files, named_as_photos)


def read_members(
    archive: str | os.PathLike[str],
    wanted: Callable[[PurePosixPath], bool],
    *,
    limit: int,
    max_member_bytes: int,
) -> list[tuple[str, bytes | None]]:
    """The first ``limit`` regular files of ``archive`` whose path ``wanted`` takes, with their bytes
    (``None`` for a member larger than ``max_member_bytes``, left unread); nothing is written to disk.
    Member paths are checked as extraction checks them; :class:`ArchiveError` if unsafe or unreadable."""
    archive = Path(archive)
    found: list[tuple[str, bytes | None]] = []
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if len(found) >= limit:
                        break
                    rel = safe_member_path(info.filename)
                    if info.is_dir() or stat.S_ISLNK(info.external_attr >> 16) or not wanted(rel):
                        continue
                    if info.file_size > max_member_bytes:
                        found.append((str(rel), None))
                        continue
                    with zf.open(info) as handle:
                        data = handle.read(max_member_bytes + 1)  # the declared size can lie
                    found.append((str(rel), data if len(data) <= max_member_bytes else None))
        else:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    if len(found) >= limit:
                        break
                    rel = safe_member_path(member.name)
                    if not (member.isfile() and wanted(rel)):
                        continue
                    content = tar.extractfile(member) if member.size <= max_member_bytes else None
                    if content is None:
                        found.append((str(rel), None))
                        continue
                    with content:
                        found.append((str(rel), content.read(max_member_bytes)))
    except UNREADABLE as error:
        raise ArchiveError(f"{archive.name}: unreadable archive: {error}") from error
    return found


def extract_archive(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float | None = None,
) -> Path:
    """Safely extract ``archive`` into the new folder ``dest`` (which must not exist); return ``dest``."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such archive")
    if dest.exists():
        raise ArchiveError(f"{dest}: extraction target already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    budget = _Budget(max_bytes, max_files, max_ratio, archive.stat().st_size)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, staging, budget)
        elif is_archive(archive):
            _extract_tar(archive, staging, budget)
        else:
            raise ArchiveError(
                f"{archive}: unsupported archive type (expected {', '.join(ARCHIVE_SUFFIXES)})"
            )
        os.replace(staging, dest)
    except UNREADABLE as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ArchiveError(f"{archive}: cannot extract: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("extracted %s (%d files, %d bytes) to %s", archive, budget.files, budget.bytes, dest)
    return dest


def ensure_extracted(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, sha256: str | None = None
) -> Path:
    """Extract ``archive`` into ``dest`` unless ``dest`` already holds this archive; return ``dest``.

    ``sha256`` is the archive digest the caller expects (e.g. from a manifest). If the archive is gone
    but ``dest`` holds an extraction with that digest, the extraction is used as it is.
    """
    archive, dest = Path(archive), Path(dest)
    held = _extracted_digest(dest)
    if not archive.is_file():
        if sha256 is not None and held == sha256:
            return dest
        raise ArchiveError(f"{archive}: no such archive")
    actual = file_sha256(archive)
    if sha256 is not None and actual != sha256:
        raise ArchiveError(f"{archive}: sha256 {actual} differs from the expected {sha256}")
    if held == actual:
        return dest
    if dest.exists():
        raise ArchiveError(f"{dest}: exists and does not hold an extraction of {archive}")
    extract_archive(archive, dest)
    write_json(dest / MARKER, {"source": str(archive), "sha256": actual})
    return dest


def _extracted_digest(dest: Path) -> str | None:
    marker = dest / MARKER
    if not marker.is_file():
        return None
    data = read_json(marker)
    return str(data["sha256"]) if isinstance(data, dict) and "sha256" in data else None
