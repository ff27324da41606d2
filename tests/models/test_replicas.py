from concurrent.futures import ThreadPoolExecutor

import torch

import models
from models.checkpoint import ModelSpec
from models.predictor import Predictor
from models.transforms import IMAGENET_MEAN, IMAGENET_STD


def small_predictor() -> Predictor:
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="resnet50", class_names=tuple("abcdef"), input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    model = models.create_model("resnet50", num_classes=6)
    return Predictor(model, spec, name="small", version="1", device=torch.device("cpu"))


def test_a_lane_replica_shares_the_weights_and_owns_its_modules() -> None:
    predictor = small_predictor()
    assert predictor.replica(0) is predictor
    replica = predictor.replica(1)
    assert replica is predictor.replica(1), "made once per lane"
    assert replica is not predictor.replica(2)
    assert replica.model is not predictor.model
    assert replica.model.layer4 is not predictor.model.layer4
    for (name, mine), (_, theirs) in zip(
        predictor.model.state_dict(keep_vars=True).items(),
        replica.model.state_dict(keep_vars=True).items(),
        strict=True,
    ):
        assert mine is theirs, f"{name} is copied, not shared"
    images = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(
        replica.classify(images).probabilities, predictor.classify(images).probabilities
    )


def test_two_lanes_explaining_at_once_get_what_each_would_alone() -> None:
    """Each lane hooks its own replica's layer: explanations run side by side on two threads match the
    same explanations run one after the other."""
    predictor = small_predictor()
    batches = [torch.rand(4, 3, 64, 64) for _ in range(2)]
    alone = [predictor.explain(batch, method="gradcam") for batch in batches]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(3):
            together = list(
                pool.map(
                    lambda lane: predictor.replica(lane).explain(batches[lane], method="gradcam"), (0, 1)
                )
            )
            for mine, theirs in zip(together, alone, strict=True):
                torch.testing.assert_close(mine.heatmaps, theirs.heatmaps)
                torch.testing.assert_close(mine.probabilities, theirs.probabilities)
