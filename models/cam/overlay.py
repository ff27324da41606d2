"""Rendering heatmaps over photos: pure functions on arrays, plus PNG and base64 encoders."""

import base64

import cv2
import numpy as np
import numpy.typing as npt

_COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}

U8Image = npt.NDArray[np.uint8]
FloatMap = npt.NDArray[np.floating]


def list_colormaps() -> list[str]:
    """Names accepted as ``colormap``."""
    return list(_COLORMAPS)


def heatmap_to_uint8(heatmap: FloatMap) -> U8Image:
    """A [0, 1] heatmap (H, W) as an 8-bit grayscale image."""
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heatmap.shape}")
    return np.asarray(np.round(np.clip(heatmap, 0.0, 1.0) * 255.0), dtype=np.uint8)


def colorize(heatmap: FloatMap, colormap: str = "jet") -> U8Image:
    """A [0, 1] heatmap (H, W) as an RGB image (H, W, 3) through ``colormap``."""
    try:
        code = _COLORMAPS[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; known: {', '.join(list_colormaps())}") from None
    bgr = cv2.applyColorMap(heatmap_to_uint8(heatmap), code)
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def resize_heatmap(heatmap: FloatMap, size: tuple[int, int]) -> FloatMap:
    """A heatmap resized (bilinear) to ``size`` = (height, width)."""
    height, width = size
    array = np.asarray(heatmap, dtype=np.float32)
    if array.shape == (height, width):
        return array
    return np.asarray(cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.float32)


def overlay_heatmap(
    image: U8Image, heatmap: FloatMap, *, colormap: str = "jet", alpha: float = 0.5
) -> U8Image:
    """Blend a colorized heatmap over an RGB photo (H, W, 3) uint8, at the photo's own size.

    ``alpha`` is the heatmap's weight: 0 gives the photo, 1 the colorized heatmap alone. A heatmap of
    another size is resized (bilinear) to the photo first.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = image.shape[:2]
    color = colorize(resize_heatmap(heatmap, (height, width)), colormap).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color
    return np.asarray(np.clip(np.round(blended), 0, 255), dtype=np.uint8)


def encode_png(image: U8Image) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or grayscale (H, W) uint8 image."""
    if image.ndim == 3:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as PNG")
    return bytes(buffer.tobytes())


def to_base64_png(image: U8Image) -> str:
    """The image as base64-encoded PNG text, as the API returns it."""
    return base64.b64encode(encode_png(image)).decode("ascii")
