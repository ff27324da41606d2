"""Training-time augmentation. Evaluation preprocessing lives in ``models.transforms``, built from the
checkpoint spec; this module only adds the random parts in front of the same resize and normalisation,
and the batch-level mixing that follows them.
"""

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from training.config import TrainConfig
from training.data import Transform

#: (images, labels) -> (mixed images, class probabilities).
BatchMix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

AUTO_AUGMENT_POLICIES: dict[str, Callable[[], v2.Transform]] = {
    "trivial": v2.TrivialAugmentWide,
    "rand": v2.RandAugment,
}


def build_train_transform(config: TrainConfig) -> Transform:
    """RGB PIL image -> augmented, normalised float tensor (3, S, S).

    The paper's recipe (section 4) is resize to ``input_size`` plus a random horizontal flip; the
    optional random-resized crop, rotation, colour jitter, automatic augmentation policy and random
    erasing come from torchvision's classification reference recipes, in the order they use there;
    grayscale and blur follow the policy, as in SimCLR's augmentations.
    """
    size = (config.input_size, config.input_size)
    steps: list[v2.Transform] = [v2.ToImage()]
    if config.crop_min_scale is not None:
        steps.append(v2.RandomResizedCrop(size, scale=(config.crop_min_scale, 1.0), antialias=True))
    else:
        steps.append(v2.Resize(size, antialias=True))
    if config.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if config.rotation > 0:
        steps.append(v2.RandomRotation(config.rotation))
    if config.color_jitter > 0:
        jitter = config.color_jitter
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if config.auto_augment is not None:
        steps.append(AUTO_AUGMENT_POLICIES[config.auto_augment]())
    if config.grayscale > 0:
        steps.append(v2.RandomGrayscale(p=config.grayscale))
    if config.blur > 0:
        # Out of focus, as a camera over a bin often is: a 5-pixel kernel is up to ~5% of a 112 px side.
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=config.blur))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(config.mean), std=list(config.std)),
    ]
    if config.random_erasing > 0:
        steps.append(v2.RandomErasing(p=config.random_erasing))
    return v2.Compose(steps)


def build_batch_mix(config: TrainConfig, num_classes: int) -> BatchMix | None:
    """MixUp and/or CutMix of a whole batch (one of the two at random per batch when both are on),
    or ``None`` when neither is; the labels become the mixed class probabilities.

    They draw from torch's global generator, which the engine reseeds every epoch, so a resumed run
    mixes its batches exactly as an uninterrupted one.
    """
    mixes: list[v2.Transform] = []
    if config.mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=config.mixup_alpha, num_classes=num_classes))
    if config.cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=config.cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    mix: BatchMix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
    return mix
