from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from models.transforms import IMAGENET_MEAN, IMAGENET_STD
from training.config import TrainConfig, make_config


def test_defaults_are_the_papers_recipe() -> None:
    config = make_config(data="d", out="o")
    assert config.recipe == "paper"
    assert config.model == "se_resnet50"
    assert config.input_size == 128
    assert config.hflip is True
    assert (config.crop_min_scale, config.rotation, config.color_jitter) == (None, 0.0, 0.0)
    assert (config.optimizer, config.lr, config.weight_decay) == ("adam", 1e-3, 0.0)
    assert (config.batch_size, config.epochs, config.label_smoothing) == (128, 50, 0.0)
    assert (config.schedule, config.warmup_epochs) == ("constant", 0)
    assert (config.mean, config.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert config.split == (0.70, 0.13, 0.17)


def test_improved_recipe_and_overrides() -> None:
    config = make_config("improved", data="d", out="o", epochs=7, lr=None, warmup_epochs=2)
    assert (config.optimizer, config.schedule, config.label_smoothing) == ("adamw", "cosine", 0.1)
    assert config.crop_min_scale == 0.5
    assert config.rotation > 0
    assert config.color_jitter > 0
    assert config.epochs == 7
    assert config.warmup_epochs == 2
    assert config.lr == 1e-3  # None means "the recipe's value"


def test_strong_recipe_adds_the_reference_regularisers() -> None:
    config = make_config("strong", data="d", out="o")
    assert (config.auto_augment, config.random_erasing) == ("trivial", 0.1)
    assert (config.mixup_alpha, config.cutmix_alpha) == (0.2, 1.0)
    assert config.input_size == 112
    assert make_config("strong", data="d", out="o", mixup_alpha=0.0).mixup_alpha == 0.0
    # The paper's recipe mixes nothing.
    paper = make_config(data="d", out="o")
    assert (paper.auto_augment, paper.random_erasing, paper.mixup_alpha, paper.cutmix_alpha) == (
        None,
        0,
        0,
        0,
    )


def test_a_config_saved_before_the_augmentation_options_still_loads(tmp_path: Path) -> None:
    data = make_config(data=str(tmp_path), out="o").to_dict()
    for key in ("auto_augment", "random_erasing", "mixup_alpha", "cutmix_alpha"):
        del data[key]
    assert TrainConfig.from_dict(data) == make_config(data=str(tmp_path), out="o")


def test_round_trip_through_plain_dict(tmp_path: Path) -> None:
    config = make_config(
        "improved", data=str(tmp_path), out="o", model="simple_cnn", model_kwargs={"width": 4}
    )
    data = config.to_dict()
    assert isinstance(data["mean"], list)
    assert TrainConfig.from_dict(data) == config
    assert "data" not in config.recipe_record()
    assert config.recipe_record()["optimizer"] == "adamw"


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 0},
        {"lr": 0.0},
        {"optimizer": "adagrad"},
        {"schedule": "step"},
        {"split": (0.5, 0.2, 0.2)},
        {"split": (0.9, 0.0, 0.1)},
        {"split": (0.9, 0.2, -0.1)},
        {"label_smoothing": 1.0},
        {"warmup_epochs": 50},
        {"recipe": "nope"},
        {"auto_augment": "autoaugment"},
        {"random_erasing": 1.5},
        {"mixup_alpha": -0.1},
        {"cutmix_alpha": -1.0},
    ],
)
def test_invalid_values_raise(change: dict[str, Any]) -> None:
    field = next(iter(change))
    with pytest.raises(ValueError, match=f"^invalid training config: .*{field}"):
        TrainConfig.from_dict({"data": "d", "out": "o", **change})
    with pytest.raises(ValidationError, match=field):
        TrainConfig(data="d", out="o", **change)


def test_every_problem_is_named_on_one_line() -> None:
    with pytest.raises(ValueError, match="invalid training config") as caught:
        make_config(data="d", out="o", epochs=0, lr=-1.0)
    message = str(caught.value)
    assert "\n" not in message
    assert "epochs: Input should be greater than or equal to 1" in message
    assert "lr: Input should be greater than 0" in message


def test_unknown_recipe_and_keys_raise() -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        make_config("fancy", data="d", out="o")
    with pytest.raises(ValueError, match="colour: Extra inputs are not permitted"):
        TrainConfig.from_dict({"data": "d", "out": "o", "colour": "red"})


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_no_option_takes_infinity_or_nan(value: float) -> None:
    """JSON cannot hold them (a run's config.json, a job's record), and no option means anything with them."""
    with pytest.raises(ValueError, match="rotation: Input should be a finite number"):
        make_config(data="d", out="o", rotation=value)
