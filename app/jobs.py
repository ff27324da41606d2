"""Creating jobs from requests: validated parameters, safely stored inputs, then a queued task.

Everything here touches the disk or Redis, so routes call it through a thread pool.
"""

import errno
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import kombu.exceptions
import redis
from fastapi import HTTPException, status

from app.errors import too_large, unprocessable
from core.confinement import links_out
from core.jobs import PHOTO_SUFFIXES, Job, JobParams, JobStore
from core.review import SITE_PATTERN, ReviewError, ReviewStore
from core.settings import Settings
from training.archive import (
    ARCHIVE_SUFFIXES,
    ArchiveError,
    ArchiveTooLargeError,
    check_archive,
    extract_archive,
    is_archive,
)
from training.split import parse_data_sets

_CHUNK = 1 << 20


class JobSubmitter(Protocol):
    def __call__(self, job: Job) -> None: ...


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or one it was raised from, is a full disk (or quota)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def insufficient_storage(label: str) -> HTTPException:
    return HTTPException(
        status.HTTP_507_INSUFFICIENT_STORAGE,
        f"{label}: the server's disk is full; nothing was kept, try again later",
    )


def copy_upload(source: BinaryIO, dest: Path, *, max_bytes: int, label: str) -> Path:
    """Copy an uploaded file to ``dest``; 413 (and nothing kept) once it passes ``max_bytes``, 507 (and
    nothing kept) when the disk is full."""
    written = 0
    source.seek(0)
    try:
        with open(dest, "wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    break
                out.write(chunk)
    except OSError as error:
        if not disk_full(error):
            raise
        dest.unlink(missing_ok=True)
        raise insufficient_storage(label) from None
    if written > max_bytes:
        dest.unlink(missing_ok=True)
        raise too_large(f"{label}: larger than the limit of {max_bytes} bytes")
    return dest


#: Bytes of a client's file name kept in a stored name: a file system allows 255 in all, and 64
#: characters of emoji are 256.
STEM_BYTES = 64


def short_stem(filename: str) -> str:
    """The stem of ``filename`` cut to :data:`STEM_BYTES` bytes of UTF-8, never within a character."""
    return Path(filename).stem.encode()[:STEM_BYTES].decode(errors="ignore")


def archive_suffix(filename: str) -> str:
    """The archive suffix of ``filename``; 415 if it is not an archive."""
    for suffix in ARCHIVE_SUFFIXES:
        if filename.lower().endswith(suffix):
            return suffix
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"{filename or 'upload'}: expected an archive ({', '.join(ARCHIVE_SUFFIXES)})",
    )


def vet_archive(path: Path, settings: Settings, *, label: str) -> int:
    """Number of files in the archive at ``path``, from its member list (nothing extracted); 413 for a size
    or file-count bomb, 422 if unsafe or if no member is named as a photo."""
    try:
        contents = check_archive(
            path,
            max_bytes=settings.max_archive_bytes,
            max_files=settings.max_archive_files,
            photo_suffixes=PHOTO_SUFFIXES,
        )
    except ArchiveTooLargeError as error:
        raise too_large(f"{label}: {error}") from None
    except ArchiveError as error:
        raise unprocessable(f"{label}: {str(error).replace(str(path), label)}") from None
    if contents.photos == 0:
        raise unprocessable(
            f"{label}: no photos in the archive ({contents.files} files, none ending in "
            f"{', '.join(PHOTO_SUFFIXES)})"
        )
    return contents.files


#: The longest file or folder name that Linux file systems take, and the longest path they open
#: (PATH_MAX), in bytes.
NAME_MAX = 255
PATH_MAX = 4096


#: How many of the data root's entries an error names.
LISTED_ENTRIES = 10


def data_root_help(root: Path) -> str:
    """Where the data root is set, and what it holds at its top (the names a data_path may start with)."""
    entries = (
        sorted(entry.name for entry in root.iterdir() if not entry.name.startswith("."))
        if root.is_dir()
        else []
    )
    shown = ", ".join(entries[:LISTED_ENTRIES]) + (", ..." if len(entries) > LISTED_ENTRIES else "")
    holds = f"it holds: {shown}" if entries else "it is empty or missing"
    return f"the data root is the folder TRASHCAM_DATA_ROOT names (default: <var>/data), and {holds}"


def confined_data_path(relative: str, settings: Settings) -> Path:
    """``relative`` resolved inside the data root (symlinks followed); 422 if it leaves it or is missing."""
    root = settings.resolved_data_root.resolve()
    if "\x00" in relative:
        raise unprocessable("data_path must not contain a NUL character")
    candidate = Path(relative)
    # File systems refuse longer names (ENAMETOOLONG), which would otherwise surface as a 500.
    if any(len(part.encode()) > NAME_MAX for part in candidate.parts):
        raise unprocessable(f"data_path has a component over {NAME_MAX} bytes")
    # ... and longer paths (PATH_MAX), however short each component.
    if len(str(root / candidate).encode()) >= PATH_MAX:
        raise unprocessable(f"data_path is over {PATH_MAX} bytes under the data root")
    if candidate.is_absolute() or ".." in candidate.parts:
        raise unprocessable(f"data_path must be relative to the data root, without '..': {relative!r}")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise unprocessable(f"data_path {relative!r} leads outside the data root")
    if not resolved.exists():
        raise unprocessable(
            f"data_path {relative!r} does not exist under the data root; {data_root_help(root)}"
        )
    if resolved.is_file() and not is_archive(resolved):
        raise unprocessable(f"data_path {relative!r} is neither a folder nor an archive")
    if resolved.is_file():
        vet_archive(resolved, settings, label=relative)
    else:
        refuse_links_out(resolved, root, relative)
    return resolved


#: How many of a folder's escaping links an error lists.
LINKS_LISTED = 5


def refuse_links_out(folder: Path, root: Path, label: str) -> None:
    """422 listing the links inside ``folder`` that lead outside ``root`` (training would read files the
    data root does not hold); links that stay inside are fine."""
    escaping = links_out(folder, root)
    if escaping:
        listed = ", ".join(escaping[:LINKS_LISTED])
        more = f" and {len(escaping) - LINKS_LISTED} more" if len(escaping) > LINKS_LISTED else ""
        raise unprocessable(
            f"data_path {label!r} holds links that lead outside the data root: {listed}{more}"
        )


#: ``data_path`` that names a site's review set: ``review:SITE`` (or ``NAME=review:SITE``).
REVIEW_PREFIX = "review:"


@dataclass(frozen=True)
class TrainingData:
    """A training job's data: TrainConfig ``data``, a description, and the lineage of each review set
    it holds (by data set name)."""

    data: str | tuple[str, ...]
    description: str
    review_sets: dict[str, dict[str, object]]


def store_training_data(
    upload: tuple[str, BinaryIO] | None, data_paths: Sequence[str], folder: Path, settings: Settings
) -> TrainingData:
    """The data of a training job: the uploaded archive, saved and vetted in the job folder; paths
    confined to the data root; and review sets (``review:SITE``), the photos people labelled written
    out in the job folder.

    One data set alone is given as its path. Several (or a named one, ``name=path``) are a mixed run:
    the upload is named ``upload``, a path without a name is named after its file, a review set
    ``review-SITE``.
    """
    renamed = [
        f"review-{value.removeprefix(REVIEW_PREFIX)}={value}" if value.startswith(REVIEW_PREFIX) else value
        for value in data_paths
    ]
    try:
        parsed = parse_data_sets(renamed)
    except ValueError as error:
        raise unprocessable(f"data_path: {error}") from None
    names = (["upload"] if upload is not None else []) + [name for name, _ in parsed]
    if not names:
        raise unprocessable("give the data set as an uploaded archive ('file') and/or as 'data_path'")
    if len(set(names)) != len(names):
        raise unprocessable(f"data set names must differ: {names}")
    named: list[tuple[str, Path]] = []
    described: list[str] = []
    review_sets: dict[str, dict[str, object]] = {}
    for (name, relative), given in zip(parsed, data_paths, strict=True):
        if relative.startswith(REVIEW_PREFIX):
            site = relative.removeprefix(REVIEW_PREFIX)
            if not SITE_PATTERN.fullmatch(site):
                raise unprocessable(
                    f"data_path {given}: review:SITE names a site's review set; a site is 1-64 letters, "
                    "digits, '.', '_', '-', first a letter or digit"
                )
            try:
                labelled = ReviewStore(settings.review_dir).export(site, folder / f"review-{site}")
            except ReviewError as error:
                raise unprocessable(f"data_path {given}: {error}") from None
            named.append((name, labelled.folder))
            review_sets[name] = labelled.lineage
            described.append(given)
            continue
        named.append((name, confined_data_path(relative, settings)))
        described.append(f"data_root:{given}")
    if upload is not None:
        filename, source = upload
        archive = copy_upload(
            source,
            folder / f"upload{archive_suffix(filename)}",
            max_bytes=settings.max_archive_upload_bytes,
            label=filename,
        )
        vet_archive(archive, settings, label=filename)
        named.insert(0, ("upload", archive))
        described.insert(0, f"upload:{filename}")
    if len(named) == 1 and "=" not in "".join(data_paths):
        return TrainingData(str(named[0][1]), described[0], review_sets)
    return TrainingData(tuple(f"{name}={path}" for name, path in named), ", ".join(described), review_sets)


def store_photos(uploads: Sequence[tuple[str, BinaryIO]], folder: Path, settings: Settings) -> int:
    """Save the photos (or unpack the one archive) under ``folder``; return how many photos it holds."""
    folder.mkdir(parents=True)
    if len(uploads) == 1 and is_archive(uploads[0][0]):
        filename, source = uploads[0]
        archive = copy_upload(
            source,
            folder.parent / f"upload{archive_suffix(filename)}",
            max_bytes=settings.max_archive_upload_bytes,
            label=filename,
        )
        vet_archive(archive, settings, label=filename)
        folder.rmdir()
        try:
            extract_archive(
                archive, folder, max_bytes=settings.max_archive_bytes, max_files=settings.max_archive_files
            )
        except ArchiveTooLargeError as error:
            raise too_large(f"{filename}: {error}") from None
        except ArchiveError as error:
            if disk_full(error):
                raise insufficient_storage(filename) from None
            raise unprocessable(f"{filename}: {str(error).replace(str(folder.parent), '')}") from None
        finally:
            archive.unlink(missing_ok=True)
    else:
        for index, (filename, source) in enumerate(uploads):
            suffix = Path(filename).suffix.lower()
            if suffix not in PHOTO_SUFFIXES:
                raise HTTPException(
                    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                    f"{filename}: expected a photo ({', '.join(PHOTO_SUFFIXES)}) or one archive",
                )
            # Numbered names keep duplicates apart and keep client paths out of the file system.
            name = f"{index:05d}-{short_stem(filename)}{suffix}"
            copy_upload(source, folder / name, max_bytes=settings.max_upload_bytes, label=filename)
    count = sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if count == 0:
        raise unprocessable(f"no photos found (expected files ending in {', '.join(PHOTO_SUFFIXES)})")
    return count


def enqueue(
    jobs: JobStore, submit: JobSubmitter, params: JobParams, job_id: str, submitted_by: str | None = None
) -> Job:
    """Record the job (and the name of the key that started it) and queue its task; 503 (and nothing
    kept) if the queue is unreachable."""
    try:
        job = jobs.create(params, job_id=job_id, submitted_by=submitted_by)
        jobs.mark_queued(job)
        submit(job)
    except (redis.RedisError, kombu.exceptions.KombuError, OSError) as error:
        discard(jobs.folder(job_id))
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the job queue is unreachable, try again later ({type(error).__name__})",
            headers={"Retry-After": "5"},
        ) from None
    return job


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
