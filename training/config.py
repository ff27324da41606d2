"""Training configuration and named recipes.

The defaults are the paper's recipe (Bai and Joe, section 4): training from scratch at 128x128 with
horizontal-flip augmentation, Adam at learning rate 0.001, batch 128, cross-entropy, 50 epochs (the
paper trains 100 but reports its curves and accuracies at 50). ``improved`` is a modern from-scratch
recipe for comparison and ``strong`` adds automatic augmentation, random erasing and MixUp/CutMix to it;
``general`` trains on several sources at once, against the background and camera shortcuts of a data set
shot on one posterboard; every field can also be overridden on its own.
"""

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.registry import validate_model_options
from models.transforms import IMAGENET_MEAN, IMAGENET_STD

#: The TrashNet authors' train/val/test proportions, which the project keeps for comparability.
DEFAULT_SPLIT = (0.70, 0.13, 0.17)

#: A modern from-scratch recipe: AdamW, warm-up and cosine decay, label smoothing, crops, rotation, jitter.
IMPROVED: dict[str, Any] = {
    "epochs": 100,
    "optimizer": "adamw",
    "weight_decay": 0.05,
    "schedule": "cosine",
    "warmup_epochs": 5,
    "label_smoothing": 0.1,
    "crop_min_scale": 0.5,
    "rotation": 15.0,
    "color_jitter": 0.2,
}

#: The strong recipe with the regularisers of torchvision's reference recipes for training from scratch.
STRONG: dict[str, Any] = {
    **IMPROVED,
    "input_size": 112,
    "crop_min_scale": 0.35,
    "rotation": 0.0,
    "color_jitter": 0.0,
    "auto_augment": "trivial",
    "random_erasing": 0.1,
    "mixup_alpha": 0.2,
    "cutmix_alpha": 1.0,
}

#: Fine-tuning a trained model on a few hundred photos of one site: a low learning rate, small batches so
#: that a few dozen photos still give a few hundred steps, the backbone frozen for the first epoch so
#: that new head rows settle before they move it, classes balanced (a site rarely sees its materials
#: equally often), and augmentation that keeps the photos recognisable. What the site did not upload is
#: kept: every class of the base stays, half of each epoch's draws are the base's own training photos
#: with the base's answers on them distilled (replay, where they are at hand; else the base's outputs on
#: the new photos are distilled), and the result serves beside its base, which answers the photos nearer
#: its own training photos than the site's (``route``). Holding the weights near the base's instead
#: (``forgetting_limit`` 0.05) kept less of the lacking classes and cost the site more (docs/RESULTS.md,
#: "Serving a site's model beside its base"). The run stops once
#: the validation loss has not improved for 10 epochs (with 5, two of three runs on site sd would have
#: stopped before their best epoch, as the cosine schedule's late epochs still improve). The model is
#: the last epoch's: a site's validation split is a dozen or two photos, and the epoch chosen on their
#: accuracy scored lower on the site's other photos than the last one in each of three draws
#: (docs/RESULTS.md, "Serving a site's model beside its base").
FINETUNE: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 3e-4,
    "weight_decay": 0.05,
    "schedule": "cosine",
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "input_size": 112,
    "crop_min_scale": 0.35,
    "auto_augment": "trivial",
    "random_erasing": 0.1,
    "class_balance": 1.0,
    # Within the replayed photos, small sources count more (the general recipe's sampling); the site's
    # own photos are one source.
    "source_balance": 0.5,
    "freeze_epochs": 1,
    "replay": 0.5,
    "replay_distill": 1.0,
    "distill": 1.0,
    "forgetting_limit": 1.0,
    "route": True,
    "early_stop": 10,
    "keep_epoch": "last",
}

RECIPES: dict[str, dict[str, Any]] = {
    # The dataclass defaults are the paper's recipe.
    "paper": {},
    "improved": IMPROVED,
    # The improved recipe with the regularisers of torchvision's reference recipes for training from
    # scratch, at the photos' own 112 px, which costs 23% fewer pixels per image than 128 px.
    # TrivialAugment brings its own rotations and colour changes, so the fixed ones are off.
    "strong": STRONG,
    # Several sources at once, for photos that do not look like the training set: the strong recipe,
    # with sampling that lets small classes and sources count, grayscale and blur against a camera's
    # colour and focus, and objects of plain-background photos pasted onto other photos' backgrounds so
    # that the white posterboard stops being a cue. The two sites (sd, a camera over a sorting bin, and
    # er, street litter) are held out by default.
    "general": {
        **STRONG,
        "class_balance": 0.5,
        "source_balance": 0.5,
        "grayscale": 0.1,
        "blur": 0.2,
        "paste_background": 0.5,
        "plain_sources": ("trashnet",),
        "holdout_sources": ("sd", "er"),
    },
    # From a trained model's weights (``init_from``), on an operator's own few hundred photos.
    "finetune": FINETUNE,
}

#: Recipes that start from a trained model and make no sense from random weights.
BASE_RECIPES = ("finetune",)

#: Fields that only say where and how fast to run; they may change on resume without changing results.
RUNTIME_FIELDS = ("data", "out", "device", "workers", "replay_data")


Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine"]
AutoAugment = Literal["trivial", "rand"]
ClassChoice = Literal["base", "data"]
Pipeline = Literal["loader", "device"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
#: Automatic augmentation policies (torchvision's TrivialAugmentWide and RandAugment).
AUTO_AUGMENTS: tuple[str, ...] = get_args(AutoAugment)


class TrainConfig(BaseModel):
    """Everything one training run depends on, with its limits and help: the one declaration that the
    CLI's flags (``training.run``) and the HTTP form (``POST /train``) are derived from. Plain values
    only, so it serialises to JSON and to ``torch.load(weights_only=True)``."""

    # No NaN or infinity: JSON cannot hold them, and no option means anything with them.
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    data: str | tuple[str, ...] = Field(
        description="one data set (a folder or an archive), or several as name=path (a name defaults "
        "to the file name), each split on its own and trained on together"
    )
    out: str = Field(description="the run folder")
    model: str = Field("se_resnet50", description="the architecture (models.list_models)")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description='architecture options, e.g. {"width": 8}'
    )
    recipe: str = Field("paper", description="the named defaults this config started from")
    epochs: int = Field(50, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=4096)
    optimizer: Optimizer = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="peak learning rate")
    weight_decay: NonNegative = 0.0
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD's momentum")
    schedule: Schedule = "constant"
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warm-up (fewer than epochs)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    input_size: int = Field(128, ge=8, le=1024, description="side of the square the network sees")
    hflip: bool = Field(True, description="random horizontal flips")
    crop_min_scale: float | None = Field(
        None, gt=0.0, le=1.0, description="random-resized-crop minimum area fraction (not set: no crops)"
    )
    rotation: NonNegative = Field(0.0, description="random rotation range in degrees")
    color_jitter: NonNegative = Field(0.0, description="brightness/contrast/saturation jitter")
    auto_augment: AutoAugment | None = Field(None, description="TrivialAugmentWide or RandAugment")
    random_erasing: Probability = Field(0.0, description="probability of erasing a random rectangle")
    mixup_alpha: NonNegative = Field(0.0, description="MixUp's Beta(alpha, alpha); 0: off")
    cutmix_alpha: NonNegative = Field(0.0, description="CutMix's Beta(alpha, alpha); 0: off")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="normalisation mean per channel")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="normalisation std per channel")
    seed: int = Field(0, ge=0)
    split: tuple[float, float, float] = Field(
        DEFAULT_SPLIT,
        description="train, val and test fractions; test may be 0 (no test report: a data set too small "
        "to spare photos for one)",
    )
    amp: bool | None = Field(
        None,
        description="mixed precision: bf16 autocast on a CPU that has bf16, bf16 or fp16 on CUDA; not set: "
        "on wherever it is native (a CPU without bf16 instructions trains in fp32)",
    )
    holdout_sources: tuple[str, ...] = Field(
        (), description="sources never trained or selected on (tagged by a data set's manifest.csv)"
    )
    class_balance: Probability = Field(
        0.0, description="sample by n_class**-x: 0 uniform, 1 every class drawn equally often"
    )
    source_balance: Probability = Field(
        0.0, description="sample by n_source**-x: 0 uniform, 1 every source drawn equally often"
    )
    grayscale: Probability = Field(0.0, description="probability of a grayscale photo")
    blur: Probability = Field(0.0, description="probability of a Gaussian blur")
    paste_background: Probability = Field(
        0.0,
        description="probability that a plain-source photo has its object pasted onto a crop of another "
        "training photo (training.paste)",
    )
    plain_sources: tuple[str, ...] = Field((), description="sources shot on plain backgrounds")
    init_from: str | None = Field(
        None,
        description="fine-tune: start from this checkpoint's weights, its architecture kept and the "
        "classifier rows of classes it shares kept by name",
    )
    #: The digest of ``init_from``'s weights, recorded when the run starts (``None``: not yet); a run
    #: given one refuses a checkpoint whose weights differ.
    init_sha256: str | None = None
    #: The classes of ``init_from``, recorded when the run starts, so the record says which head rows
    #: were kept and which are new.
    init_classes: tuple[str, ...] = ()
    #: The registered model ``init_from`` is (``name:version``), for the lineage; the record then leaves
    #: the server's path out.
    base: str | None = None
    #: The review sets among the data (by data set name): which site, how many labels, by whom, up to
    #: when, and a digest of the items and labels; so a model says which people's answers it learned.
    review_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    freeze_epochs: int = Field(
        0, ge=0, description="epochs at the start that train only the classifier (needs a base model)"
    )
    sure_target_accuracy: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="how often the model's sure answers must be right on the validation photos: its "
        "probability threshold is chosen for it (photos unlike the training photos are never sure)",
    )
    freeze_norm: bool = Field(
        False,
        description="with a base model, batch norms keep the base's statistics while the weights train, "
        "so a few photos of one camera do not shift how the model sees every other photo",
    )
    backbone_lr: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="the learning rate of everything but the classifier, as a share of lr"
    )
    classes: ClassChoice = Field(
        "base",
        description="with a base model, the classes the new model knows: 'base' keeps every class of the "
        "base (the data's new ones added), 'data' only the data's; without a base, the data's",
    )
    replay: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="with a base model and its training photos at hand (replay_manifest), the share of each "
        "epoch's draws that are those photos, so what the new data lacks is not forgotten",
    )
    replay_classes: Literal["all", "lacking"] = Field(
        "all",
        description="which classes of the base's photos are replayed: 'all', or 'lacking', only those the "
        "data has no photos of, so that the data's own photos alone say what its classes look like",
    )
    replay_class_balance: Probability = Field(
        0.5, description="sampling of the replayed photos by n_class**-x (the general recipe's 0.5)"
    )
    replay_source_balance: Probability = Field(
        0.5, description="sampling of the replayed photos by n_source**-x (the general recipe's 0.5)"
    )
    replay_distill: NonNegative = Field(
        0.0,
        description="the weight of distilling the base's outputs on the replayed photos, so that they keep "
        "the base's answers and not only their labels (dark experience replay); 0: off",
    )
    replay_manifest: str | None = Field(
        None, description="the split manifest of the base model's training data; its train split is replayed"
    )
    replay_data: tuple[str, ...] = Field(
        (), description="where the replay manifest's data sets are now (NAME=PATH, or PATH for one)"
    )
    distill: NonNegative = Field(
        0.0,
        description="with a base model and no replay manifest, the weight of distilling the base's outputs "
        "on the new photos (learning without forgetting); 0: off",
    )
    forgetting_limit: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="with a replay manifest: how much lower (0.05: 5 points) the result may score than "
        "the base on the base's validation photos of the classes the data lacks; the weights are moved "
        "towards the base's (WiSE-FT) until it holds; 1: not checked",
    )
    early_stop: int = Field(
        0, ge=0, description="stop after this many epochs without a lower validation loss; 0: never"
    )
    keep_epoch: Literal["best", "last"] = Field(
        "best",
        description="which epoch's weights the run keeps as its model: the one with the best "
        "validation accuracy, or the last one's (for a validation split of a few dozen photos, on which "
        "one photo moves the accuracy by several points and choosing an epoch is mostly noise)",
    )
    average_epochs: int = Field(
        0,
        ge=0,
        description="with keep_epoch 'last': the model kept is the mean of the weights (batch-norm "
        "statistics included) at the end of each of the last this many epochs (stochastic weight "
        "averaging); 0: the last epoch's own",
    )
    route: bool = Field(
        False,
        description="with a replay manifest and the base's classes: serve the model beside its base, "
        "each photo nearer the base's training photos than the data's answered by the base",
    )
    pipeline: Pipeline = Field(
        "loader",
        description="how training photos reach the network: 'loader' decodes and augments each photo "
        "every epoch in loader processes; 'device' decodes every photo once into a uint8 tensor on the "
        "training device and augments whole batches there, channels-last (for a GPU; without background "
        "paste or replay)",
    )
    device: str | None = Field(None, description="torch device (default: cuda if available, else cpu)")
    workers: int | None = Field(None, ge=0, description="data-loader processes (default: sized to the CPUs)")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        checks = [
            (self.warmup_epochs < self.epochs, "warmup_epochs must be in [0, epochs)"),
            (all(s > 0 for s in self.std), "std must be positive"),
            (
                self.split[0] > 0 and self.split[1] > 0 and self.split[2] >= 0,
                "split needs positive train and val fractions and a test fraction of 0 or more",
            ),
            (abs(sum(self.split) - 1) < 1e-6, "split fractions must sum to 1"),
            (self.recipe in RECIPES, f"recipe must be one of {tuple(RECIPES)}"),
            (isinstance(self.data, str) or len(self.data) >= 1, "data needs at least one data set"),
            (self.freeze_epochs < self.epochs, "freeze_epochs must be in [0, epochs)"),
            (
                self.init_from is not None or self.recipe not in BASE_RECIPES,
                f"the {self.recipe} recipe starts from a trained model: give a base model (init_from)",
            ),
            (
                self.init_from is not None or self.freeze_epochs == 0,
                "freeze_epochs needs a base model (init_from) whose backbone it keeps",
            ),
            (
                self.init_from is not None or not self.freeze_norm,
                "freeze_norm needs a base model (init_from) whose statistics it keeps",
            ),
            (
                self.init_from is not None or self.replay_manifest is None,
                "replay_manifest needs a base model (init_from) whose training photos it lists",
            ),
            (
                self.replay_manifest is not None or not self.replay_data,
                "replay_data says where a replay manifest's data sets are: give replay_manifest",
            ),
            (
                self.average_epochs == 0 or self.keep_epoch == "last",
                "average_epochs averages the last epochs' weights: set keep_epoch to 'last'",
            ),
            (self.average_epochs <= self.epochs, "average_epochs must be at most epochs"),
            (
                self.pipeline == "loader" or self.paste_background == 0,
                "the device pipeline has no background paste: set paste_background to 0",
            ),
            (
                self.pipeline == "loader" or self.replay == 0,
                "the device pipeline does not replay a base model's photos: set replay to 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        validate_model_options(self.model, self.model_kwargs)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), for JSON and for ``torch.load(weights_only=True)``."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys or bad values raise ``ValueError``."""
        return checked(cls.model_validate, data)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (and validated)."""
        return checked(type(self).model_validate, {**self.model_dump(), **changes})

    def recipe_record(self) -> dict[str, Any]:
        """The hyperparameters that shape the weights, for ``ModelSpec.recipe``."""
        data = self.to_dict()
        for key in (*RUNTIME_FIELDS, "model", "model_kwargs", "mean", "std", "input_size"):
            # The spec records the architecture, input size and normalisation in their own fields.
            data.pop(key)
        if self.base is not None:
            data.pop("init_from")  # a registered model is named by its ref, not the server's path
        # The replayed photos are recorded by their manifest's digest (model_spec), not the server's path.
        data.pop("replay_manifest")
        return data


def describe(error: ValidationError) -> str:
    """``"epochs: Input should be greater than or equal to 1; ..."``: every field at fault, on one line."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def checked(build: Callable[[Any], "TrainConfig"], values: Any) -> "TrainConfig":
    """``build(values)``, its validation errors as one ``ValueError("invalid training config: ...")``."""
    try:
        return build(values)
    except ValidationError as error:
        raise ValueError(f"invalid training config: {describe(error)}") from None


def make_config(recipe: str = "paper", **overrides: Any) -> TrainConfig:
    """A config from the named recipe with ``overrides`` on top (``None`` values are ignored)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
    values: dict[str, Any] = {**RECIPES[recipe], "recipe": recipe}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return checked(TrainConfig.model_validate, values)
