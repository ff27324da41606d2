"""The recipe's augmentation as batched tensor operations, for batches already on the training device.

``training.augment`` augments one PIL photo at a time in loader processes, which is what a CPU can feed
a CPU model with; a GPU trains SE-ResNet-50 at 112 px on tens of thousands of photos a second, faster
than any loader decodes and augments them. Here every random choice is still drawn per photo, but
applied to the whole batch at once: the crop, flip and rotation as one ``affine_grid``/``grid_sample``,
the colour changes, grayscale, blur and erasing as masked arithmetic. The automatic augmentation
policy (TrivialAugmentWide, RandAugment) is torchvision's own, drawn per group of photos rather than
per photo, since its operations take one magnitude per call.

The order is ``training.augment``'s: crop and flip, rotation, colour jitter, policy, grayscale, blur,
normalisation, erasing. Where a step differs from its torchvision counterpart, its docstring says how.
"""

import math

import torch
import torch.nn.functional as F

from training.augment import AUTO_AUGMENT_POLICIES
from training.config import TrainConfig

#: Photos per draw of the automatic augmentation policy (one operation and magnitude per group).
POLICY_GROUP = 8
#: ITU-R 601 luma weights, as torchvision's ``rgb_to_grayscale``.
LUMA = (0.299, 0.587, 0.114)
#: Random erasing's area and aspect ranges, torchvision's defaults.
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)
#: Random-resized crop's aspect range, torchvision's default.
CROP_RATIO = (3 / 4, 4 / 3)
#: The blur's kernel and sigma range, as ``training.augment``.
BLUR_KERNEL, BLUR_SIGMA = 5, (0.1, 2.0)


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _chance(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


class DeviceAugment:
    """uint8 batch ``(N, 3, H, W)`` -> augmented, normalised float batch ``(N, 3, S, S)``, channels-last,
    on the batch's device, every draw from ``generator`` (the policy's from torch's global generator, as
    on the loader path)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.size = config.input_size
        self.policy = None if config.auto_augment is None else AUTO_AUGMENT_POLICIES[config.auto_augment]()

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        config = self.config
        images = self.geometry(pixels.float().div_(255), generator)
        if config.color_jitter > 0:
            images = self.jitter(images, generator)
        if self.policy is not None:
            images = self.apply_policy(images)
        if config.grayscale > 0:
            images = self.grayscale(images, generator)
        if config.blur > 0:
            images = self.blur(images, generator)
        mean = torch.tensor(config.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(config.std, device=images.device).view(1, 3, 1, 1)
        images = (images - mean) / std
        if config.random_erasing > 0:
            images = self.erase(images, generator)
        return images.contiguous(memory_format=torch.channels_last)

    def geometry(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random-resized crop (or the whole photo), horizontal flip and rotation in one resampling.

        The crop's width and height fractions come from torchvision's area and log-aspect draws; where
        torchvision redraws a crop that does not fit (and after ten tries takes the centre), its sides
        are clipped to the photo here. Rotated corners are black, as torchvision's fill. The resampling
        is bilinear without antialiasing: a crop is at most 1.3 times the output's side here.
        """
        config, n, device = self.config, images.shape[0], images.device
        if config.crop_min_scale is not None:
            area = _uniform(n, config.crop_min_scale, 1.0, generator, device)
            log_ratio = _uniform(n, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator, device)
            ratio = log_ratio.exp()
            width = (area * ratio).sqrt().clamp(max=1.0)
            height = (area / ratio).sqrt().clamp(max=1.0)
        else:
            width = height = torch.ones(n, device=device)
        # Normalised coordinates run from -1 to 1, so a crop of fraction w may centre anywhere in 1 - w.
        centre_x = _uniform(n, -1.0, 1.0, generator, device) * (1 - width)
        centre_y = _uniform(n, -1.0, 1.0, generator, device) * (1 - height)
        flip = torch.ones(n, device=device)
        if config.hflip:
            flip = torch.where(_chance(n, 0.5, generator, device), -1.0, 1.0)
        angle = torch.zeros(n, device=device)
        if config.rotation > 0:
            angle = _uniform(n, -config.rotation, config.rotation, generator, device).deg2rad()
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([width * cos * flip, -width * sin, centre_x], dim=1),
                torch.stack([height * sin * flip, height * cos, centre_y], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def jitter(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Brightness, contrast and saturation factors drawn per photo from ``[1 - j, 1 + j]``, applied
        in that order (torchvision draws the order too)."""
        n, device, j = images.shape[0], images.device, self.config.color_jitter
        low = max(0.0, 1 - j)
        brightness, contrast, saturation = (
            _uniform(n, low, 1 + j, generator, device).view(n, 1, 1, 1) for _ in range(3)
        )
        images = (images * brightness).clamp_(0, 1)
        mean = _luma(images).mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * contrast + mean).clamp_(0, 1)
        gray = _luma(images)
        return ((images - gray) * saturation + gray).clamp_(0, 1)

    def apply_policy(self, images: torch.Tensor) -> torch.Tensor:
        """The automatic augmentation policy on uint8 pixels, as the loader path runs it, one draw per
        group of :data:`POLICY_GROUP` photos."""
        assert self.policy is not None
        pixels = images.mul(255).round_().to(torch.uint8)
        # A plain tensor is an image to torchvision's v2 transforms; a 4-d one a batch of them.
        groups = [self.policy(group) for group in pixels.split(POLICY_GROUP)]
        return torch.cat(groups).float().div_(255)

    def grayscale(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        chosen = _chance(images.shape[0], self.config.grayscale, generator, images.device).view(-1, 1, 1, 1)
        return torch.where(chosen, _luma(images).expand_as(images), images)

    def blur(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """:func:`gaussian_blur` with a sigma drawn per photo, on the photos chosen with probability
        ``blur``."""
        n, device = images.shape[0], images.device
        chosen = _chance(n, self.config.blur, generator, device)
        sigma = _uniform(n, *BLUR_SIGMA, generator, device)
        if not bool(chosen.any()):
            return images
        images = images.clone()
        images[chosen] = gaussian_blur(images[chosen], sigma[chosen])
        return images

    def erase(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random erasing with torchvision's defaults (area 2-33%, aspect 0.3-3.3, value 0 after
        normalisation); a rectangle that would not fit is clipped to the photo instead of redrawn."""
        n, _, height, width = images.shape
        device = images.device
        chosen = _chance(n, self.config.random_erasing, generator, device)
        area = _uniform(n, *ERASE_SCALE, generator, device) * height * width
        ratio = _uniform(n, math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), generator, device).exp()
        box_h = (area * ratio).sqrt().round().clamp(1, height)
        box_w = (area / ratio).sqrt().round().clamp(1, width)
        top = (torch.rand(n, generator=generator, device=device) * (height - box_h + 1)).floor()
        left = (torch.rand(n, generator=generator, device=device) * (width - box_w + 1)).floor()
        rows = torch.arange(height, device=device).view(1, -1)
        cols = torch.arange(width, device=device).view(1, -1)
        in_rows = (rows >= top.view(-1, 1)) & (rows < (top + box_h).view(-1, 1))
        in_cols = (cols >= left.view(-1, 1)) & (cols < (left + box_w).view(-1, 1))
        mask = (in_rows.view(n, 1, height, 1) & in_cols.view(n, 1, 1, width)) & chosen.view(n, 1, 1, 1)
        return images.masked_fill(mask, 0.0)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each photo of ``images`` blurred by a Gaussian of :data:`BLUR_KERNEL` pixels and its own
    ``sigma``: separable, with reflected borders, as torchvision's ``gaussian_blur``."""
    n, channels, height, width = images.shape
    offsets = torch.arange(BLUR_KERNEL, device=images.device, dtype=images.dtype) - BLUR_KERNEL // 2
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.to(images.dtype).view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    pad, groups = BLUR_KERNEL // 2, n * channels
    # One channel of one photo per group, so every photo has its own kernel in one convolution.
    flat = images.reshape(1, groups, height, width)
    flat = F.conv2d(
        F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, BLUR_KERNEL), groups=groups
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel.view(-1, 1, BLUR_KERNEL, 1), groups=groups
    )
    return flat.view(n, channels, height, width)


def _luma(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)
