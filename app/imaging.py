"""Turning uploaded bytes into RGB photos, refusing what is not a safe, whole image."""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class BadImageError(Exception):
    """An upload that is not an acceptable image; ``status_code`` says how the API answers."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def decode_image(data: bytes, *, max_pixels: int, name: str = "upload") -> Image.Image:
    """Decode ``data`` into an RGB image with its EXIF orientation applied.

    415: not an image, or a format outside :data:`SUPPORTED_FORMATS`; 413: more than ``max_pixels``
    pixels (checked from the header, before any pixel is decoded); 422: truncated or corrupt.
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
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise BadImageError(413, f"{name}: image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(422, f"{name}: truncated or corrupt {image.format} image: {error}") from None
    return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16-bit and float images are rescaled, not clipped, and
    transparent pixels are laid over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
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
    return image.convert("RGB")
