"""Reading uploaded files within the configured limits."""

from fastapi import HTTPException, UploadFile, status
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.imaging import BadImageError, decode_image


async def read_upload(upload: UploadFile, *, max_bytes: int) -> bytes:
    """The upload's bytes; 413 if it is larger than ``max_bytes``."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{upload.filename or 'upload'}: larger than the limit of {max_bytes} bytes",
        )
    return data


async def read_image(upload: UploadFile, settings: Settings) -> Image.Image:
    """Decode an uploaded photo (off the event loop); 413/415/422 with the reason if it is unusable."""
    data = await read_upload(upload, max_bytes=settings.max_upload_bytes)
    try:
        return await run_in_threadpool(
            decode_image, data, max_pixels=settings.max_image_pixels, name=upload.filename or "upload"
        )
    except BadImageError as error:
        raise HTTPException(error.status_code, error.message) from None


def gather_uploads(
    file: UploadFile | None, files: list[UploadFile] | None, settings: Settings
) -> list[UploadFile]:
    """The images of a request that may use ``file``, ``files`` or both."""
    uploads = ([file] if file is not None else []) + list(files or [])
    if not uploads:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "send at least one image as 'file' or 'files'"
        )
    if len(uploads) > settings.max_files_per_request:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(uploads)} files is over the limit of {settings.max_files_per_request} per request",
        )
    return uploads
