"""Training-time augmentation. Evaluation preprocessing lives in ``models.transforms``, built from the
checkpoint spec; this module only adds the random parts in front of the same resize and normalisation.
"""

import torch
from torchvision.transforms import v2

from training.config import TrainConfig
from training.data import Transform


def build_train_transform(config: TrainConfig) -> Transform:
    """RGB PIL image -> augmented, normalised float tensor (3, S, S).

    The paper's recipe (section 4) is resize to ``input_size`` plus a random horizontal flip; the
    optional random-resized crop, rotation and colour jitter are the ``improved`` recipe's additions.
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
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(config.mean), std=list(config.std)),
    ]
    return v2.Compose(steps)
