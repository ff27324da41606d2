"""The training options a user sets, derived from :class:`training.config.TrainConfig`: their names,
types, limits and help are declared there once, and the CLI's flags (``training.run``) and the HTTP
form of ``POST /train`` are made from them here.

``data``, ``out``, ``model`` and ``recipe`` are given each front end's own way, ``model_kwargs`` is JSON
in both, and ``init_sha256``, ``init_classes`` and ``base`` are recorded by the run, never set.
"""

import argparse
import copy
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo

from training.config import TrainConfig

#: Every option a user may set, in the order help lists them.
USER_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "input_size",
    "hflip",
    "crop_min_scale",
    "rotation",
    "color_jitter",
    "auto_augment",
    "random_erasing",
    "mixup_alpha",
    "cutmix_alpha",
    "mean",
    "std",
    "split",
    "seed",
    "amp",
    "holdout_sources",
    "class_balance",
    "source_balance",
    "grayscale",
    "blur",
    "paste_background",
    "plain_sources",
    "init_from",
    "freeze_epochs",
    "freeze_norm",
    "backbone_lr",
    "classes",
    "replay",
    "replay_classes",
    "replay_class_balance",
    "replay_source_balance",
    "replay_distill",
    "replay_manifest",
    "replay_data",
    "distill",
    "forgetting_limit",
    "route",
    "early_stop",
    "keep_epoch",
    "average_epochs",
    "sure_target_accuracy",
    "pipeline",
    "device",
    "workers",
)
#: Where and how fast a run goes: given again on resume, never part of its results.
RUNTIME_OPTIONS = ("device", "workers")
#: The name users know an option by, where it is not the field's.
PUBLIC_NAMES = {"holdout_sources": "holdout"}
#: The command line only. A checkpoint path and the device are the server's business: over HTTP a
#: registered base model is named instead (``base``). A model's normalisation is its base's or the
#: recipe's. The base's training photos to replay are the server's to find. (``split`` is a form field
#: given three times: train, val, test.)
CLI_ONLY = ("init_from", "replay_manifest", "replay_data", "device", "workers", "mean", "std")
#: Extra spellings on the command line.
CLI_ALIASES = {"init_from": ("--base",)}
FORM_OPTIONS = tuple(name for name in USER_OPTIONS if name not in CLI_ONLY)


def public_name(field: str) -> str:
    return PUBLIC_NAMES.get(field, field)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [arg for arg in get_args(annotation) if arg is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


def limits(info: FieldInfo) -> str:
    """The field's bounds as help text, e.g. ``"1 <= x <= 1000"`` ('' when it has none)."""
    lower = upper = ""
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            lower = f"{item.ge} <= "
        elif isinstance(item, annotated_types.Gt):
            lower = f"{item.gt} < "
        elif isinstance(item, annotated_types.Le):
            upper = f" <= {item.le}"
        elif isinstance(item, annotated_types.Lt):
            upper = f" < {item.lt}"
    return f"{lower}x{upper}" if lower or upper else ""


def _help(info: FieldInfo) -> str:
    parts = [part for part in (info.description, limits(info)) if part]
    return "; ".join(parts).replace("%", "%%")


def add_option(parser: argparse.ArgumentParser, name: str) -> None:
    """A ``--flag`` for TrainConfig field ``name``, with its type, choices and help; ``None`` when not
    given (the recipe's value)."""
    info = TrainConfig.model_fields[name]
    kind = _without_none(info.annotation)
    flags = [f"--{public_name(name).replace('_', '-')}", *CLI_ALIASES.get(name, ())]
    options: dict[str, Any] = {"dest": name, "help": _help(info), "default": None}
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif get_origin(kind) is Literal:
        options["choices"] = get_args(kind)
    elif get_origin(kind) is tuple:
        items = get_args(kind)
        if len(items) == 2 and items[1] is Ellipsis:
            options.update(nargs="+", type=items[0], metavar="NAME")
        else:
            options.update(nargs=len(items), type=items[0])
    elif kind in (int, float, str):
        options["type"] = kind
    else:
        raise TypeError(f"TrainConfig.{name}: no command-line form for {info.annotation}")
    parser.add_argument(*flags, **options)


def add_options(parser: argparse.ArgumentParser, names: Sequence[str] = USER_OPTIONS) -> None:
    for name in names:
        add_option(parser, name)


def given_options(args: argparse.Namespace, names: Sequence[str] = USER_OPTIONS) -> dict[str, Any]:
    """The options given on the command line, as TrainConfig values."""
    values = {name: getattr(args, name) for name in names}
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}


class FormOptions(BaseModel):
    """Base of the form model: what was filled in, as TrainConfig values."""

    def overrides(self) -> dict[str, Any]:
        values = {}
        for name in FORM_OPTIONS:
            value = getattr(self, public_name(name))
            if value is not None:
                values[name] = tuple(value) if isinstance(value, list) else value
        return values


def _form_field(name: str) -> tuple[Any, FieldInfo]:
    info = copy.copy(TrainConfig.model_fields[name])
    info.default, info.default_factory = None, None
    kind = _without_none(info.annotation)
    if get_origin(kind) is tuple:
        kind = types.GenericAlias(list, (get_args(kind)[0],))  # a form repeats the key
    return kind | None, info


def form_model() -> type[FormOptions]:
    """The training options of ``POST /train``'s form: every one optional (the recipe's value), with
    the limits and help of TrainConfig."""
    fields: dict[str, Any] = {public_name(name): _form_field(name) for name in FORM_OPTIONS}
    return create_model("TrainingOptions", __base__=FormOptions, **fields)


if TYPE_CHECKING:  # a model made at run time; type checkers see the base that declares its use
    TrainingOptions = FormOptions
else:
    TrainingOptions = form_model()
