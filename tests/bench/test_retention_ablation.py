from pathlib import Path

import torch

from bench.retention_ablation import renormalise
from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from models.registry import create_model
from models.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.training.helpers import CLASS_NAMES, make_image_folder
from training.data import Loading, Photos
from training.evaluation import load_for_evaluation


def test_renormalising_estimates_the_batch_norms_on_the_photos_and_keeps_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    root = make_image_folder(tmp_path / "photos", per_class=4)
    samples = [
        (f"{name}/{name}{index}.png", label) for label, name in enumerate(CLASS_NAMES) for index in range(4)
    ]
    photos = Photos(root, samples, CLASS_NAMES)
    spec = ModelSpec(
        arch="se_resnet50", class_names=CLASS_NAMES, input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    before = tmp_path / "before.pt"
    save_checkpoint(before, create_model("se_resnet50", num_classes=len(CLASS_NAMES)), spec)

    after = load_checkpoint(renormalise(before, photos, tmp_path / "after.pt"))

    loaded = load_for_evaluation(before, photos, Loading(torch.device("cpu"), batch_size=64, workers=0))
    images = torch.cat([batch[0] for batch in loaded.loader])
    with torch.no_grad():
        stem = loaded.model.get_submodule("conv1")(images)
    # One batch holds every photo, so the statistics are exactly theirs (the variance unbiased, as
    # batch norm keeps it).
    assert torch.allclose(after.state_dict["bn1.running_mean"], stem.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(
        after.state_dict["bn1.running_var"], stem.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6
    )
    original = load_checkpoint(before).state_dict
    assert not torch.allclose(original["bn1.running_mean"], after.state_dict["bn1.running_mean"])
    for name, tensor in original.items():
        if "running" not in name and "num_batches_tracked" not in name:
            assert torch.equal(tensor, after.state_dict[name]), name
