"""Creating jobs from requests: validated parameters, safely stored inputs, then a queued task.

Everything here touches the disk or Redis, so routes call it through a thread pool.
"""

import csv
import errno
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

import kombu.exceptions
import redis
from fastapi import HTTPException, status
from PIL import Image

from app.errors import too_large, unprocessable
from app.quotas import admission, check_job_quota
from core.confinement import links_out
from core.job_folder import REVIEW_SET_PREFIX, UPLOAD_STEM, JobFolder
from core.jobs import (
    PHOTO_SUFFIXES,
    Job,
    JobParams,
    JobStore,
    folder_bytes,
)
from core.review import SITE_PATTERN, ReviewError, ReviewStore
from core.settings import Settings
from models.files import redact_paths
from training.archive import (
    ARCHIVE_SUFFIXES,
    ArchiveError,
    ArchiveTooLargeError,
    check_archive,
    is_archive,
    read_members,
)
from training.data import find_class_root
from training.split import SOURCE_TAGS_FILE, holdout_refused, parse_data_sets, parse_source_tags

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


#: How many of an upload's photos are opened in the request: if none of them is an image, the job is
#: refused there instead of failing in a worker.
SAMPLED_PHOTOS = 8


def why_not_a_photo(data: bytes) -> str | None:
    """``None`` if ``data`` opens as an image (its header and, where the format has them, its checksums;
    no pixel is decoded), else why not."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as error:  # Pillow raises many kinds for a broken file; each is the answer here
        return str(error) or type(error).__name__
    return None


def refuse_unreadable_photos(samples: Sequence[tuple[str, bytes | None]], label: str) -> None:
    """422 when not one of the sampled photos opens as an image (one that does is enough: the job reports
    each photo that fails). Photos too large to sample (``None``) say nothing either way."""
    problems = [(name, why_not_a_photo(data)) for name, data in samples if data is not None]
    if not problems:
        return
    if all(problem is not None for _, problem in problems):
        listed = "; ".join(f"{Path(name).name}: {problem}" for name, problem in problems[:3])
        raise unprocessable(f"{label}: none of the {len(samples)} photos tried opens as an image ({listed})")


def is_photo_member(path: PurePosixPath) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES


def vet_archive(path: Path, settings: Settings, *, label: str, uploaded: bool = True) -> int:
    """Number of photos in the archive at ``path``, from its member list, with the first few of them
    opened (nothing extracted); 413 for a size, file-count or compression bomb (the ratio only for an
    ``uploaded`` archive: the data root's are the operator's), 422 if unsafe, if no member is named as a
    photo, or if none of those opened is an image."""
    try:
        contents = check_archive(
            path,
            max_bytes=settings.max_archive_bytes,
            max_files=settings.max_archive_files,
            max_ratio=settings.max_archive_ratio if uploaded else None,
            photo_suffixes=PHOTO_SUFFIXES,
        )
        if contents.photos == 0:
            raise unprocessable(
                f"{label}: no photos in the archive ({contents.files} files, none ending in "
                f"{', '.join(PHOTO_SUFFIXES)})"
            )
        samples = read_members(
            path, is_photo_member, limit=SAMPLED_PHOTOS, max_member_bytes=settings.max_upload_bytes
        )
    except ArchiveTooLargeError as error:
        raise too_large(f"{label}: {error}") from None
    except ArchiveError as error:
        raise unprocessable(f"{label}: {redact_paths(str(error), {str(path): label})}") from None
    refuse_unreadable_photos(samples, label)
    return contents.photos


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
        vet_archive(resolved, settings, label=relative, uploaded=False)
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
        f"{REVIEW_SET_PREFIX}{value.removeprefix(REVIEW_PREFIX)}={value}"
        if value.startswith(REVIEW_PREFIX)
        else value
        for value in data_paths
    ]
    try:
        parsed = parse_data_sets(renamed)
    except ValueError as error:
        raise unprocessable(f"data_path: {error}") from None
    names = ([UPLOAD_STEM] if upload is not None else []) + [name for name, _ in parsed]
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
                labelled = ReviewStore(settings.review_dir).export(site, JobFolder(folder).review_set(site))
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
            JobFolder(folder).upload(archive_suffix(filename)),
            max_bytes=settings.max_archive_upload_bytes,
            label=filename,
        )
        vet_archive(archive, settings, label=filename)
        named.insert(0, (UPLOAD_STEM, archive))
        described.insert(0, f"upload:{filename}")
    if len(named) == 1 and "=" not in "".join(data_paths):
        return TrainingData(str(named[0][1]), described[0], review_sets)
    return TrainingData(tuple(f"{name}={path}" for name, path in named), ", ".join(described), review_sets)


#: The largest source-tags file read in a request; a larger one is left to the worker.
MAX_TAGS_BYTES = 16 << 20


def data_set_sources(path: Path) -> set[str] | None:
    """The source tags of a data set (a folder or an archive), from its source-tags file at the top of
    its class folders; None when that cannot be told here (a file over :data:`MAX_TAGS_BYTES`)."""
    if path.is_file():
        tags = read_members(
            path, lambda rel: rel.name == SOURCE_TAGS_FILE, limit=64, max_member_bytes=MAX_TAGS_BYTES
        )
        if not tags:
            return set()
        # The class root's file: the shallowest (a class folder's own file tags nothing).
        depth = min(len(PurePosixPath(name).parts) for name, _ in tags)
        texts = [data for name, data in tags if len(PurePosixPath(name).parts) == depth]
        if any(data is None for data in texts):
            return None
        decoded = [data.decode("utf-8", errors="replace") for data in texts if data is not None]
    else:
        tags_file = find_class_root(path) / SOURCE_TAGS_FILE
        if tags_file.is_file() and tags_file.stat().st_size > MAX_TAGS_BYTES:
            return None
        decoded = [tags_file.read_text(encoding="utf-8", errors="replace")] if tags_file.is_file() else []
    return {source for text in decoded for source in parse_source_tags(text).values()}


def refuse_unknown_holdout(data: str | tuple[str, ...], holdout: Sequence[str]) -> None:
    """422 when no held-out source is tagged on a photo of the job's data sets (``holdout_refused``):
    the run would hold out nothing (a misspelt name), which the worker would find only after the job
    waited its turn."""
    if not holdout:
        return
    entries = [data] if isinstance(data, str) else list(data)
    found: set[str] = set()
    for _, path in parse_data_sets(entries):
        try:
            sources = data_set_sources(Path(path))
        except ArchiveError as error:
            raise unprocessable(f"data: {error}") from None
        except csv.Error as error:
            raise unprocessable(f"data: its {SOURCE_TAGS_FILE} cannot be read: {error}") from None
        if sources is None:
            return  # the worker reads it, and says so if a held-out source has no photos
        found |= sources
    missing = sorted(set(holdout) - found)
    if holdout_refused(holdout, found):
        known = ", ".join(sorted(found)) or f"none (no {SOURCE_TAGS_FILE} tags the photos)"
        raise unprocessable(f"holdout: no photos of {missing}; the data sets' sources: {known}")


def store_photos(uploads: Sequence[tuple[str, BinaryIO]], folder: Path, settings: Settings) -> int:
    """Save a heatmap batch's photos under ``folder``'s inputs, or its one archive in ``folder`` (vetted
    from its member list; the worker extracts it). How many photos the batch holds."""
    if len(uploads) == 1 and is_archive(uploads[0][0]):
        filename, source = uploads[0]
        folder.mkdir(parents=True)
        archive = copy_upload(
            source,
            JobFolder(folder).upload(archive_suffix(filename)),
            max_bytes=settings.max_archive_upload_bytes,
            label=filename,
        )
        return vet_archive(archive, settings, label=filename)
    inputs = JobFolder(folder).inputs
    inputs.mkdir(parents=True)
    stored = []
    for index, (filename, source) in enumerate(uploads):
        suffix = Path(filename).suffix.lower()
        if suffix not in PHOTO_SUFFIXES:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"{filename}: expected a photo ({', '.join(PHOTO_SUFFIXES)}) or one archive",
            )
        # Numbered names keep duplicates apart and keep client paths out of the file system.
        name = f"{index:05d}-{short_stem(filename)}{suffix}"
        stored.append(copy_upload(source, inputs / name, max_bytes=settings.max_upload_bytes, label=filename))
    refuse_unreadable_photos([(path.name, path.read_bytes()) for path in stored[:SAMPLED_PHOTOS]], "files")
    return len(stored)


def enqueue(
    jobs: JobStore,
    submit: JobSubmitter,
    params: JobParams,
    job_id: str,
    settings: Settings,
    submitted_by: str | None = None,
) -> Job:
    """Record the job (and the name of the key that started it) and queue its task: 503 or 429 past the
    queues' bound or the key's quota (see :mod:`app.quotas`), 503 if the queue is unreachable; nothing is
    kept when refused."""
    try:
        with admission:
            check_job_quota(jobs, settings, submitted_by, adding_bytes=folder_bytes(jobs.folder(job_id)))
            job = jobs.create(params, job_id=job_id, submitted_by=submitted_by)
        jobs.mark_queued(job)
        submit(job)
    except (redis.RedisError, kombu.exceptions.KombuError, OSError) as error:
        jobs.discard(job_id)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the job queue is unreachable, try again later ({type(error).__name__})",
            headers={"Retry-After": "5"},
        ) from None
    except BaseException:  # refused (429, 503) or failed: nothing of the job is kept
        jobs.discard(job_id)
        raise
    return job


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
