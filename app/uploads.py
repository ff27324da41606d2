"""Reading uploaded files within the configured limits."""

import functools
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request, status
from PIL import Image
from starlette.concurrency import run_in_threadpool

# Starlette's: what a parsed form holds (FastAPI's UploadFile, which routes declare, derives from it).
from starlette.datastructures import UploadFile
from torch import Tensor

from core.imaging import BadImageError, DecodeBudget, decode_image, image_size, release_freed_memory
from core.settings import Settings


async def read_upload(upload: UploadFile, *, max_bytes: int) -> bytes:
    """The upload's bytes; 413 if it is larger than ``max_bytes``."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{upload.filename or 'upload'}: larger than the limit of {max_bytes} bytes",
        )
    return data


#: Photos of more pixels than this in one request (a 12-megapixel phone photo is 12 million) have the
#: memory of their full-size decoding handed back to the system afterwards.
RELEASE_AFTER_PIXELS = 8_000_000


@functools.cache
def decode_budget(limit: int) -> DecodeBudget:
    """The process's one budget of bytes being decoded at once (one per limit, for tests' settings)."""
    return DecodeBudget(limit)


def decode_all(
    blobs: list[tuple[str, bytes]], settings: Settings, *, min_side: int, max_side: int | None
) -> list[Image.Image]:
    """Check a request's pixel and decoded-byte budgets from the headers, wait for room in the process's
    budget of bytes being decoded, then decode each photo: one trip to the thread pool for the whole
    request."""
    sizes = [image_size(blob) for _, blob in blobs]
    pixels, decoded = sum(size[0] for size in sizes), sum(size[1] for size in sizes)
    if pixels > settings.max_request_pixels:
        raise BadImageError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(blobs)} photos of {pixels} pixels in all: over the limit of "
            f"{settings.max_request_pixels} pixels a request",
        )
    if decoded > settings.max_request_bytes:
        raise BadImageError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(blobs)} photos that decode to {decoded} bytes in all: over the limit of "
            f"{settings.max_request_bytes} bytes a request",
        )
    with decode_budget(settings.max_decoding_bytes).hold(decoded):
        images = [
            decode_image(
                blob,
                max_pixels=settings.max_image_pixels,
                max_bytes=settings.max_image_bytes,
                name=name,
                min_side=min_side,
                max_side=max_side,
            )
            for name, blob in blobs
        ]
    if pixels > RELEASE_AFTER_PIXELS:
        # The full-size buffers are freed by now, but into the malloc arena of this pool thread, which
        # keeps them: hand them back, or every thread that once decoded a huge photo holds its size.
        release_freed_memory()
    return images


@dataclass(frozen=True)
class Photo:
    """An uploaded photo decoded, and prepared as a model's input."""

    image: Image.Image
    inputs: Tensor


def decode_and_prepare(
    blobs: list[tuple[str, bytes]],
    settings: Settings,
    prepare: Callable[[Image.Image], Tensor],
    *,
    min_side: int,
    max_side: int | None,
) -> list[Photo]:
    """:func:`decode_all`, and each photo prepared by ``prepare``, in the same trip to the thread pool."""
    images = decode_all(blobs, settings, min_side=min_side, max_side=max_side)
    return [Photo(image, prepare(image)) for image in images]


async def read_images(
    uploads: list[UploadFile],
    settings: Settings,
    prepare: Callable[[Image.Image], Tensor],
    *,
    min_side: int,
    max_side: int | None = None,
) -> list[Photo]:
    """Decode a request's photos, each no larger than its use needs (see
    :func:`core.imaging.decode_image`), and prepare each as the model's input, off the event loop in
    one trip (each trip to a thread costs about as much server CPU as preparing a small photo); 413 if
    together they are over the request's pixel budget, 413/415/422 with the reason if one is unusable."""
    blobs = [
        (upload.filename or "upload", await read_upload(upload, max_bytes=settings.max_upload_bytes))
        for upload in uploads
    ]
    try:
        return await run_in_threadpool(
            decode_and_prepare, blobs, settings, prepare, min_side=min_side, max_side=max_side
        )
    except BadImageError as error:
        raise HTTPException(error.status_code, error.message) from None


async def read_image(
    upload: UploadFile,
    settings: Settings,
    prepare: Callable[[Image.Image], Tensor],
    *,
    min_side: int,
    max_side: int | None = None,
) -> Photo:
    """One uploaded photo, as :func:`read_images` decodes and prepares them."""
    return (await read_images([upload], settings, prepare, min_side=min_side, max_side=max_side))[0]


async def refuse_repeated(request: Request, *names: str) -> None:
    """422 when a field that takes one value was sent several times: a form keeps only the last one,
    and the others would be dropped without a word."""
    form = await request.form()  # parsed once already, for the route's parameters: this reads its cache
    for name in names:
        count = len(form.getlist(name))
        if count > 1:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"'{name}' was sent {count} times; it takes one value"
                + (" (send several photos as 'files')" if name == "file" else ""),
            )


async def gather_uploads(request: Request, settings: Settings) -> list[UploadFile]:
    """The images of a request that may use ``file``, ``files`` or both, each as often as it likes
    (``file`` repeated is not cut down to its last part)."""
    form = await request.form()
    uploads = [
        part for name in ("file", "files") for part in form.getlist(name) if isinstance(part, UploadFile)
    ]
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
