"""Cut-and-paste onto other backgrounds, for photos of one object on a plain background.

Every TrashNet photo is one object on the same white posterboard, so a network trained on it can learn
"white background" as part of every class, and a photo from a bin or a belt then looks like nothing it
knows. Its plain background is also what makes the object easy to cut out: pixels far in colour from
the border's median are the object. Pasting that object onto a crop of another training photo keeps
the label (the object) and takes the posterboard away as a cue (in the spirit of Dwibedi et al., "Cut,
Paste and Learn", 2017, and Ghiasi et al., "Simple Copy-Paste", 2021).
"""

from collections.abc import Collection, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

#: Width of the image border (pixels) whose colours stand for the background.
BORDER = 4
#: The mask must cover this share of the photo, else it is no object (a white paper on white, say).
MIN_AREA, MAX_AREA = 0.03, 0.85
#: Colour distance (0-1, largest channel) under which a pixel counts as background at least.
MIN_THRESHOLD = 0.08
#: Share of the photo's strongest edges that the mask must hold: a clear glass or a shadow mistaken for
#: the object leaves the object's outline outside the mask, and is not pasted.
MIN_EDGE_SHARE = 0.75


def object_mask(image: Image.Image) -> NDArray[np.float32] | None:
    """A soft mask (H, W) in [0, 1] of the object in a plain-background photo, or ``None`` when no
    object stands out clearly from the background."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    height, width = rgb.shape[:2]
    if min(height, width) <= 4 * BORDER:
        return None
    border = np.concatenate(
        [
            rgb[:BORDER].reshape(-1, 3),
            rgb[-BORDER:].reshape(-1, 3),
            rgb[:, :BORDER].reshape(-1, 3),
            rgb[:, -BORDER:].reshape(-1, 3),
        ]
    )
    background = np.median(border, axis=0)
    distance = np.abs(rgb - background).max(axis=2)
    border_distance = np.abs(border - background).max(axis=1)
    # A shaded posterboard varies across the photo; three median deviations of its border is still it.
    spread = float(np.median(np.abs(border_distance - np.median(border_distance))))
    threshold = max(MIN_THRESHOLD, float(np.median(border_distance)) + 3 * 1.4826 * spread)
    binary = (distance > threshold).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    filled = _fill_holes((labels == largest).astype(np.uint8))
    area = float(filled.mean())
    if not MIN_AREA <= area <= MAX_AREA or _edge_share(rgb, filled) < MIN_EDGE_SHARE:
        return None
    # Feathered edges, so the paste leaves no hard seam that could itself become a cue.
    return np.asarray(cv2.GaussianBlur(filled.astype(np.float32), (5, 5), 0), dtype=np.float32)


def _edge_share(rgb: NDArray[np.float32], mask: NDArray[np.uint8]) -> float:
    """The share of the strongest tenth of the photo's edges that lie in (or just around) ``mask``."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    magnitude = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    strong = magnitude > np.percentile(magnitude, 90)
    around = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))).astype(bool)
    return float((strong & around).sum()) / max(1, int(strong.sum()))


def _fill_holes(mask: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The mask with every background region that does not touch the border filled in."""
    padded = np.pad(mask, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = (flood == 0)[1:-1, 1:-1]
    return np.where(holes, 1, mask).astype(np.uint8)


def paste(image: Image.Image, mask: NDArray[np.float32], background: Image.Image) -> Image.Image:
    """``image`` where ``mask`` is 1, ``background`` (resized to it) where it is 0."""
    size = image.size
    front = np.asarray(image.convert("RGB"), dtype=np.float32)
    back = np.asarray(background.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    alpha = mask[..., None]
    return Image.fromarray((front * alpha + back * (1 - alpha)).round().astype(np.uint8))


def random_crop(image: Image.Image, *, scale: tuple[float, float] = (0.02, 0.3)) -> Image.Image:
    """A random crop of ``image`` with ``scale`` of its area, drawn from torch's generator.

    Small crops: a close-up of another photo is mostly surface (a table, a floor, a pile), seldom a
    whole second object that would contradict the label.
    """
    width, height = image.size
    area = scale[0] + (scale[1] - scale[0]) * float(torch.rand(()))
    crop_w = max(1, round(width * area**0.5))
    crop_h = max(1, round(height * area**0.5))
    left = int(torch.randint(0, width - crop_w + 1, ()))
    top = int(torch.randint(0, height - crop_h + 1, ()))
    return image.crop((left, top, left + crop_w, top + crop_h))


def synthetic_background(size: tuple[int, int]) -> Image.Image:
    """A plain surface of a random colour, with a light-to-dark gradient and sensor-like noise, from
    torch's generator: the trays, belts and bin floors that no training photo shows."""
    width, height = size
    colour = torch.rand(3) * torch.rand(())  # dark surfaces as often as bright ones
    ramp = torch.linspace(0, 1, width).view(1, 1, width) if bool(torch.rand(()) < 0.5) else None
    shade = 1.0 if ramp is None else 0.6 + 0.4 * ramp
    noise = 0.04 * torch.randn(3, height, width)
    pixels = ((colour.view(3, 1, 1) * shade + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


class BackgroundPaste:
    """With probability ``p``, a plain-background sample's object goes onto a crop of a random photo
    from ``backgrounds`` (paths under ``root``), or, for a share ``synthetic`` of them, onto a
    :func:`synthetic_background`.

    It draws from torch's generator, which :class:`training.data.ImageDataset` seeds per sample, so a
    sample's paste is the same whichever loader process makes it.
    """

    def __init__(
        self,
        root: Path,
        backgrounds: Sequence[str],
        plain_indices: Collection[int],
        *,
        p: float,
        synthetic: float = 0.3,
    ) -> None:
        if not backgrounds:
            raise ValueError("pasting needs at least one background photo")
        self.root = root
        self.backgrounds = list(backgrounds)
        self.plain_indices = frozenset(plain_indices)
        self.p = p
        self.synthetic = synthetic

    def __call__(self, image: Image.Image, index: int) -> Image.Image:
        if index not in self.plain_indices or float(torch.rand(())) >= self.p:
            return image
        mask = object_mask(image)
        if mask is None:
            return image
        if float(torch.rand(())) < self.synthetic:
            return paste(image, mask, synthetic_background(image.size))
        choice = int(torch.randint(len(self.backgrounds), ()))
        with Image.open(self.root / self.backgrounds[choice]) as background:
            crop = random_crop(background.convert("RGB"))
        return paste(image, mask, crop)
