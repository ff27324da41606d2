"""Creating jobs from requests: validated parameters, safely stored inputs, then a queued task."""

import shutil
from pathlib import Path
from typing import Any, Protocol

from fastapi import HTTPException, UploadFile, status

from app.config import Settings
from training.archive import ARCHIVE_SUFFIXES, ArchiveError, ArchiveTooLargeError, check_archive, is_archive
from worker.jobs import Job

_CHUNK = 1 << 20


class JobSubmitter(Protocol):
    def __call__(self, job: Job) -> None: ...


def unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


async def save_upload(upload: UploadFile, dest: Path, *, max_bytes: int) -> Path:
    """Stream an upload to ``dest``; 413 (and nothing kept) once it passes ``max_bytes``."""
    written = 0
    with open(dest, "wb") as out:
        while chunk := await upload.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                out.close()
                dest.unlink(missing_ok=True)
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"{upload.filename or 'upload'}: larger than the limit of {max_bytes} bytes",
                )
            out.write(chunk)
    return dest


def archive_name(upload: UploadFile) -> str:
    """A safe local name that keeps the upload's archive suffix; 415 if it is not an archive."""
    filename = (upload.filename or "").lower()
    for suffix in ARCHIVE_SUFFIXES:
        if filename.endswith(suffix):
            return f"upload{suffix}"
    raise HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"{upload.filename or 'upload'}: expected an archive ({', '.join(ARCHIVE_SUFFIXES)})",
    )


def vet_archive(path: Path, settings: Settings, *, label: str) -> int:
    """Number of files in the archive at ``path``; 413 for a size or file-count bomb, 422 if unsafe."""
    try:
        return check_archive(path, max_bytes=settings.max_archive_bytes, max_files=settings.max_archive_files)
    except ArchiveTooLargeError as error:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"{label}: {error}") from None
    except ArchiveError as error:
        raise unprocessable(f"{label}: {error}") from None


def confined_data_path(relative: str, settings: Settings) -> Path:
    """``relative`` resolved inside the data root (symlinks followed); 422 if it leaves it or is missing."""
    root = settings.resolved_data_root.resolve()
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise unprocessable(f"data_path must be relative to the data root, without '..': {relative!r}")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise unprocessable(f"data_path {relative!r} leads outside the data root")
    if not resolved.exists():
        raise unprocessable(f"data_path {relative!r} does not exist under the data root")
    if resolved.is_file() and not is_archive(resolved):
        raise unprocessable(f"data_path {relative!r} is neither a folder nor an archive")
    if resolved.is_file():
        vet_archive(resolved, settings, label=relative)
    return resolved


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Job parameters without server-side paths."""
    return {key: value for key, value in params.items() if key not in ("data",)}


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
