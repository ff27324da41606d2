"""Uploads that a photo service meets sooner or later, each with the status the API should answer.

Made here, from nothing but Pillow and numpy, so that the test suite (a fast subset) and
``bench.reliability`` (all of them, against the running service) send the same bytes.
"""

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class BadImage:
    name: str
    filename: str
    data: bytes
    #: The status /classify and /explain should answer: 200, or the 4xx that says what is wrong.
    expected: int
    #: Slow or memory-hungry to decode: left to the benchmark.
    heavy: bool = False


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A photo-like image (random pixels) of ``size``, converted to ``mode``."""
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels and whose pixel data is a few bytes:
    the shape of a decompression bomb, caught from the header."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """40 x 20 stored, tagged to be shown rotated by 90 degrees: 20 x 40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(noise((40, 20)), "JPEG", exif=exif)


def animated_gif() -> bytes:
    frames = [noise((32, 24), seed=seed).convert("P") for seed in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_png_with_transparency() -> bytes:
    image = noise((32, 32)).convert("P")
    return encode(image, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    array = np.linspace(0, 65535, 32 * 24, dtype=np.uint16).reshape(24, 32)
    return encode(Image.fromarray(array), "PNG")


def over_the_size_limit(max_upload_bytes: int) -> bytes:
    """A real PNG padded after its end to one byte over the upload limit."""
    photo = encode(noise((16, 16)), "PNG")
    return photo + b"\0" * (max_upload_bytes + 1 - len(photo))


def corpus(*, max_upload_bytes: int, max_image_pixels: int) -> list[BadImage]:
    """Every case, for a service with these limits (``TRASHCAM_MAX_UPLOAD_BYTES`` and
    ``TRASHCAM_MAX_IMAGE_PIXELS``)."""
    jpeg = encode(noise((64, 64)), "JPEG")
    side_over_limit = int(max_image_pixels**0.5) + 1
    zeros_side = 6000
    return [
        BadImage("empty file", "empty.jpg", b"", 422),
        BadImage("text", "notes.txt", b"plain text, not a photo\n" * 20, 415),
        BadImage("PDF", "scan.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415),
        BadImage("PPM (unsupported format)", "photo.ppm", encode(noise((16, 16)), "PPM"), 415),
        BadImage("truncated JPEG", "cut.jpg", jpeg[: len(jpeg) // 2], 422),
        BadImage("JPEG header only", "header.jpg", jpeg[:300], 422),
        BadImage(
            f"bomb: PNG header of {side_over_limit}x{side_over_limit}",
            "bomb.png",
            png_header_only(side_over_limit, side_over_limit),
            413,
        ),
        BadImage("bomb: PNG header of 50000x50000", "bomb-50k.png", png_header_only(50_000, 50_000), 413),
        BadImage("bomb: JPEG of 65000x65000 header", "bomb.jpg", jpeg_header_of(65_000, 65_000), 413),
        BadImage(
            f"zeros: {zeros_side}x{zeros_side} PNG (a small file that decodes to {zeros_side**2:,} pixels)",
            "zeros.png",
            encode(Image.new("L", (zeros_side, zeros_side)), "PNG", optimize=True),
            200 if zeros_side**2 <= max_image_pixels else 413,
            heavy=True,
        ),
        BadImage("1x1 PNG", "dot.png", encode(noise((1, 1)), "PNG"), 200),
        BadImage("1x1 JPEG", "dot.jpg", encode(noise((1, 1)), "JPEG"), 200),
        BadImage("CMYK JPEG", "cmyk.jpg", encode(noise((48, 32), "CMYK"), "JPEG"), 200),
        BadImage("16-bit grayscale PNG", "deep.png", sixteen_bit_png(), 200),
        BadImage("RGBA PNG", "alpha.png", encode(noise((32, 32), "RGBA"), "PNG"), 200),
        BadImage("palette PNG with transparency", "palette.png", palette_png_with_transparency(), 200),
        BadImage("grayscale JPEG", "gray.jpg", encode(noise((32, 32), "L"), "JPEG"), 200),
        BadImage("animated GIF", "moving.gif", animated_gif(), 200),
        BadImage("WebP", "photo.webp", encode(noise((32, 32)), "WEBP"), 200),
        BadImage("TIFF", "photo.tiff", encode(noise((32, 32)), "TIFF"), 200),
        BadImage("BMP", "photo.bmp", encode(noise((32, 32)), "BMP"), 200),
        BadImage("EXIF-rotated JPEG", "rotated.jpg", exif_rotated_jpeg(), 200),
        BadImage("PNG named .jpg", "misnamed.jpg", encode(noise((32, 32)), "PNG"), 200),
        BadImage("one byte over the upload limit", "big.png", over_the_size_limit(max_upload_bytes), 413),
    ]


def jpeg_header_of(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is rewritten to claim ``width`` x ``height`` (at most 65535)."""
    data = bytearray(encode(noise((8, 8)), "JPEG"))
    start = data.index(b"\xff\xc0")  # baseline frame: marker, length (2), precision (1), height, width
    data[start + 5 : start + 9] = struct.pack(">HH", height, width)
    return bytes(data)
