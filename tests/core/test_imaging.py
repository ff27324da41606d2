import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from core.imaging import BadImageError, DecodeBudget, decode_image, image_size


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(data: bytes, max_pixels: int = 10_000_000) -> Image.Image:
    return decode_image(data, max_pixels=max_pixels, name="photo")


def rejected(data: bytes, max_pixels: int = 10_000_000) -> BadImageError:
    with pytest.raises(BadImageError) as caught:
        decode(data, max_pixels)
    return caught.value


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode(encode(image, "JPEG", exif=exif))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_other_modes_become_rgb(mode: str) -> None:
    image = Image.new("RGB", (16, 16), (10, 120, 250)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode(encode(image, fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == (16, 16)


def test_transparent_pixels_are_laid_over_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode(encode(image, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_images_are_rescaled_not_clipped() -> None:
    array = np.full((8, 8), 32768, dtype=np.uint16)
    decoded = decode(encode(Image.fromarray(array), "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (128, 128, 128)


def test_not_an_image_is_415() -> None:
    error = rejected(b"%PDF-1.4 not an image at all")
    assert error.status_code == 415
    assert "photo: not an image in a supported format" in error.message


def test_unsupported_format_is_415() -> None:
    error = rejected(encode(Image.new("RGB", (8, 8)), "PPM"))
    assert error.status_code == 415


def test_empty_file_is_422() -> None:
    assert rejected(b"").status_code == 422


def test_truncated_image_is_422() -> None:
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    error = rejected(data[: len(data) // 2])
    assert error.status_code == 422
    assert "truncated or corrupt JPEG" in error.message


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; the pixel data is a few bytes (a decompression bomb's shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("side", "message"),
    [
        (6_000, "6000x6000 pixels is over the limit of 30000000 pixels"),
        (10_000, "image too large"),  # PIL's own warning threshold, also refused
        (50_000, "image too large"),
    ],
)
def test_too_many_pixels_is_413_before_decoding(side: int, message: str) -> None:
    error = rejected(png_header_only(side, side), max_pixels=30_000_000)
    assert error.status_code == 413
    assert message in error.message


def photo_bytes(size: tuple[int, int], fmt: str) -> bytes:
    # Smooth content, so that a shrunk decode can be compared with a full one.
    x = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None, None]
    array = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        # DCT scaling: 1/4 keeps both sides over 112, 1/8 would not.
        ("JPEG", (250, 200)),
        # An integer factor of 800 // 112 = 7.
        ("PNG", (143, 115)),
    ],
)
def test_a_photo_is_decoded_no_larger_than_its_use_needs(fmt: str, expected: tuple[int, int]) -> None:
    data = photo_bytes((1000, 800), fmt)
    shrunk = decode_image(data, max_pixels=10**8, min_side=112)
    assert shrunk.size == expected
    assert min(shrunk.size) >= 112
    full = decode_image(data, max_pixels=10**8)
    assert full.size == (1000, 800)
    # The same picture: at the model's input size the two differ by a few levels at most.
    a = np.asarray(shrunk.resize((112, 112), Image.Resampling.BILINEAR), dtype=np.float32)
    b = np.asarray(full.resize((112, 112), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(a - b).mean() < 3


def test_a_longest_side_is_scaled_down_to_the_limit() -> None:
    image = decode_image(photo_bytes((2000, 1000), "PNG"), max_pixels=10**8, min_side=1024, max_side=1024)
    assert image.size == (1024, 512)
    small = decode_image(photo_bytes((300, 200), "PNG"), max_pixels=10**8, min_side=1024, max_side=1024)
    assert small.size == (300, 200)


def test_a_sixteen_bit_photo_is_shrunk_before_it_is_converted_and_reads_the_same() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 65536, (64, 96), dtype=np.uint16)
    data = encode(Image.fromarray(array), "PNG")
    shrunk = decode_image(data, max_pixels=10**6, min_side=16)
    assert shrunk.size == (24, 16)
    # The box mean of each 4x4 block, scaled to 8 bits as the whole photo would be.
    expected = np.round(array.reshape(16, 4, 24, 4).mean(axis=(1, 3)) * 255 / 65535)
    assert np.abs(np.asarray(shrunk)[..., 0].astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    ("mode", "decoded_bytes"), [("F", 4), ("RGBA", 4), ("I;16", 4), ("RGB", 3), ("L", 1), ("P", 4)]
)
def test_the_bytes_a_photo_decodes_to_are_counted_by_its_mode(mode: str, decoded_bytes: int) -> None:
    fmt = "TIFF" if mode == "F" else "PNG"
    data = encode(Image.new(mode, (40, 30)), fmt)
    assert image_size(data) == (1200, 1200 * decoded_bytes)
    limit = 1200 * decoded_bytes - 1
    with pytest.raises(BadImageError) as refused:
        decode_image(data, max_pixels=10**6, max_bytes=limit)
    assert refused.value.status_code == 413
    assert f"of mode {mode} decode to {1200 * decoded_bytes} bytes" in refused.value.message
    assert decode_image(data, max_pixels=10**6, max_bytes=limit + 1).mode == "RGB"


def test_the_decode_budget_waits_for_room_then_gives_up_with_503() -> None:
    budget = DecodeBudget(100, timeout_s=0.2)
    with budget.hold(60):
        assert budget.in_flight == 60
        with pytest.raises(BadImageError) as waited, budget.hold(60):
            pass
        assert waited.value.status_code == 503
        with budget.hold(40):  # fits beside the first
            assert budget.in_flight == 100
    assert budget.in_flight == 0
    # A decode that waits goes on once another gives its bytes back.
    patient = DecodeBudget(100, timeout_s=5)
    first = patient.hold(100)
    first.__enter__()
    threading.Timer(0.1, first.__exit__, (None, None, None)).start()
    started = time.monotonic()
    with patient.hold(50):
        assert time.monotonic() - started >= 0.05
        assert patient.in_flight == 50
    # A request over the whole budget still runs, alone.
    with budget.hold(10**9):
        assert budget.in_flight == 100
