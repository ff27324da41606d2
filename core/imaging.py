"""Turning uploaded bytes into RGB photos, refusing what is not a safe, whole image."""

import contextlib
import ctypes
import ctypes.util
import functools
import io
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class BadImageError(Exception):
    """An upload that is not an acceptable image; ``status_code`` says how the API answers."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


#: Bytes a pixel takes at most while a photo is decoded and shrunk, by PIL mode (a mode not listed: 4).
#: A 16-bit or float photo, or one with an alpha channel, takes more than the RGB the model uses: a 16-bit
#: one is shrunk from a copy in numpy (2 + 2), palette and 1-bit ones are converted (to RGBA, RGB) before
#: PIL can shrink them.
BYTES_PER_PIXEL = {
    "L": 1,
    "LA": 2,
    "La": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "1": 3,
    "P": 4,
    "PA": 4,
}
BYTES_PER_PIXEL |= dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), 4)


def image_size(data: bytes) -> tuple[int, int]:
    """(pixels, bytes decoded) from the header alone ((0, 0) if the header cannot be read: decoding
    will say why)."""
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
            width, height = image.size
            mode = image.mode
    except Exception:
        return 0, 0
    return width * height, width * height * BYTES_PER_PIXEL.get(mode, 4)


class DecodeBudget:
    """Bytes of photos being decoded at once, across requests: a decode that would take the total over
    ``limit`` waits for others to finish (:class:`BadImageError` 503 past ``timeout_s``)."""

    def __init__(self, limit: int, timeout_s: float = 30.0) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.in_flight = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        size = min(size, self.limit)  # a request under its own limit always fits on its own
        with self._changed:
            if not self._changed.wait_for(lambda: self.in_flight + size <= self.limit, self.timeout_s):
                raise BadImageError(503, "too many large photos are being decoded at once; try again shortly")
            self.in_flight += size
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= size
                self._changed.notify_all()


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    name: str = "upload",
    min_side: int | None = None,
    max_side: int | None = None,
    max_bytes: int | None = None,
) -> Image.Image:
    """Decode ``data`` into an RGB image with its EXIF orientation applied.

    ``min_side``: the image may come out smaller than stored, as long as both sides stay at least
    ``min_side`` (a JPEG is decoded at 1/2, 1/4 or 1/8 of its size by DCT scaling, any other format
    shrunk by an integer factor after decoding), so a photo far larger than its use costs neither
    the time to decode it whole nor the memory to keep it. ``max_side``: a longer side is then scaled
    down to it (aspect ratio kept).

    415: not an image, or a format outside :data:`SUPPORTED_FORMATS`; 413: more than ``max_pixels``
    pixels, or more than ``max_bytes`` decoded (its mode's :data:`BYTES_PER_PIXEL`; both checked from the
    header, before any pixel is decoded); 422: truncated or corrupt.
    """
    if not data:
        raise BadImageError(422, f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            # PIL only warns about sizes between its two bomb limits; treat those as bombs too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise BadImageError(
            415, f"{name}: not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(413, f"{name}: image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(422, f"{name}: truncated or corrupt image: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImageError(413, f"{name}: {width}x{height} pixels is over the limit of {max_pixels} pixels")
    decoded = width * height * BYTES_PER_PIXEL.get(image.mode, 4)
    if max_bytes is not None and decoded > max_bytes:
        raise BadImageError(
            413,
            f"{name}: {width}x{height} pixels of mode {image.mode} decode to {decoded} bytes, over the "
            f"limit of {max_bytes} bytes a photo (an 8-bit RGB photo of the same size takes "
            f"{3 * width * height})",
        )
    try:
        if min_side is not None and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        # In place: a copy of every photo would be made only to drop its orientation tag.
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as error:
        raise BadImageError(413, f"{name}: image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(422, f"{name}: truncated or corrupt {image.format} image: {error}") from None
    # Shrunk before the conversion to RGB, so that a 16-bit, float or transparent photo is converted at
    # the size the model uses, not at its own.
    return fit(to_rgb(reduce(image, min_side)), min_side=min_side, max_side=max_side)


def reduce(image: Image.Image, min_side: int | None) -> Image.Image:
    """Shrink by the largest integer factor that keeps both sides at least ``min_side`` (box filter:
    fast, and what DCT scaling does to a JPEG); a mode PIL cannot reduce stays as it is."""
    if min_side is None:
        return image
    factor = min(image.size) // min_side
    if factor < 2:
        return image
    if image.mode.startswith("I;16"):
        # PIL does not reduce 16-bit photos: box means in numpy, scaled to 8 bits as :func:`to_rgb` does.
        pixels = np.asarray(image)
        height, width = pixels.shape[0] // factor, pixels.shape[1] // factor
        blocks = pixels[: height * factor, : width * factor].reshape(height, factor, width, factor)
        means = blocks.mean(axis=(1, 3), dtype=np.float32) * np.float32(255.0 / 65535.0)
        return Image.fromarray(np.clip(np.round(means), 0, 255).astype(np.uint8), mode="L")
    try:
        return image.reduce(factor)
    except ValueError:
        return image


def fit(image: Image.Image, *, min_side: int | None, max_side: int | None) -> Image.Image:
    """Shrink by the largest integer factor that keeps both sides at least ``min_side``, then scale a
    side over ``max_side`` down to it."""
    image = reduce(image, min_side)
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit and float images are rescaled, not clipped, and
    transparent pixels are laid over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F":
            high = max(float(array.max()), 1e-12)
        gray = np.clip(np.round(array / high * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@functools.cache
def _malloc_trim() -> "ctypes._NamedFuncPointer | None":
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc only


def release_freed_memory() -> None:
    """Return the heap memory that this process has freed to the system (glibc's ``malloc_trim``, in
    every malloc arena); a no-op where the C library has none."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
