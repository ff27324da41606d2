"""The CLI's flags and the HTTP form are derived from TrainConfig: one declaration of every option."""

import argparse

import pytest
from pydantic import ValidationError

from training.cli import build_parser
from training.config import TrainConfig, make_config
from training.options import (
    CLI_ONLY,
    FORM_OPTIONS,
    USER_OPTIONS,
    TrainingOptions,
    add_options,
    given_options,
    limits,
)


def parse(command: str) -> argparse.Namespace:
    return build_parser().parse_args(command.split())


#: Fields given another way (data sets, run folder, architecture, recipe) or recorded by the run.
NOT_OPTIONS = {
    "data",
    "out",
    "model",
    "model_kwargs",
    "recipe",
    "init_sha256",
    "init_classes",
    "base",
    "review_sets",
}


def test_every_config_field_is_an_option_or_given_another_way() -> None:
    assert set(USER_OPTIONS) | NOT_OPTIONS == set(TrainConfig.model_fields)
    assert not set(USER_OPTIONS) & NOT_OPTIONS


def test_flags_carry_the_configs_types_choices_and_limits() -> None:
    args = parse(
        "train --data d --out o --epochs 3 --optimizer sgd --no-hflip --mean 0.1 0.2 0.3 "
        "--holdout sd tk --base ckpt.pt --workers 0"
    )
    options = given_options(args)
    assert (options["epochs"], options["optimizer"], options["hflip"]) == (3, "sgd", False)
    assert options["mean"] == (0.1, 0.2, 0.3)
    assert options["holdout_sources"] == ("sd", "tk")
    assert (options["init_from"], options["workers"]) == ("ckpt.pt", 0)
    assert options["lr"] is None  # not given: the recipe's value
    with pytest.raises(SystemExit):
        parse("train --data d --out o --optimizer adagrad")


def test_flag_help_states_the_fields_limits() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, ["epochs"])
    (action,) = [a for a in parser._actions if a.dest == "epochs"]
    assert action.help is not None
    assert limits(TrainConfig.model_fields["epochs"]) in action.help
    assert limits(TrainConfig.model_fields["epochs"]) == "1 <= x <= 1000"


def test_a_config_made_from_flags_is_checked_by_the_configs_limits() -> None:
    options = given_options(parse("train --data d --out o --epochs 0"))
    with pytest.raises(ValueError, match="epochs: Input should be greater than or equal to 1"):
        make_config(data="d", out="o", **options)


def test_the_form_has_every_option_but_the_servers_own() -> None:
    fields = set(TrainingOptions.model_fields)
    assert "holdout" in fields  # the name users know it by
    assert len(fields) == len(FORM_OPTIONS) == len(USER_OPTIONS) - len(CLI_ONLY)
    assert not {"init_from", "device", "workers"} & fields


def test_the_form_keeps_the_configs_limits_and_maps_back_to_its_fields() -> None:
    with pytest.raises(ValidationError, match="epochs"):
        TrainingOptions(epochs=0)
    with pytest.raises(ValidationError, match="class_balance"):
        TrainingOptions(class_balance=2.0)
    given = TrainingOptions(epochs=5, holdout=["sd"], amp=True)
    assert given.overrides() == {"epochs": 5, "holdout_sources": ("sd",), "amp": True}
    schema = TrainingOptions.model_json_schema()["properties"]["epochs"]
    assert (schema["anyOf"][0]["minimum"], schema["anyOf"][0]["maximum"]) == (1, 1000)
