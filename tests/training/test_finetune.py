import shutil
from pathlib import Path

import pytest
import torch

from models import create_model, list_models
from models.checkpoint import CheckpointError, ModelSpec, load_checkpoint, save_checkpoint
from tests.training.helpers import CLASS_NAMES, make_image_folder, tiny_config
from training.cli import main
from training.config import make_config
from training.engine import train
from training.optim import build_optimizer
from training.progress import Progress, TrainingCancelled
from training.transfer import base_options, transfer_weights


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny six-class model to fine-tune from."""
    root = tmp_path_factory.mktemp("base")
    data = make_image_folder(root / "images")
    train(tiny_config(data, root / "run", epochs=1, warmup_epochs=0, workers=0))
    return root / "run" / "best.pt"


@pytest.fixture
def site_photos(tmp_path: Path) -> Path:
    """A site's data set: two of the base's classes and a new one ("battery"), fewer photos."""
    root = make_image_folder(tmp_path / "site", per_class=6, seed=3)
    for name in ("paper", "plastic", "trash"):
        shutil.rmtree(root / name)
    (root / "cardboard").rename(root / "battery")
    return root


def test_finetune_recipe_and_frozen_epochs_need_a_base(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finetune recipe starts from a trained model"):
        make_config("finetune", data=str(tmp_path), out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="freeze_epochs needs a base"):
        make_config("improved", data=str(tmp_path), out=str(tmp_path / "run"), freeze_epochs=1)


def test_finetuning_freezes_the_backbone_first_and_records_its_lineage(
    base_run: Path, site_photos: Path, tmp_path: Path
) -> None:
    base = load_checkpoint(base_run)
    config = make_config(
        "finetune",
        data=str(site_photos),
        out=str(tmp_path / "run"),
        init_from=str(base_run),
        base="tiny:v1",
        epochs=3,
        batch_size=4,
        workers=0,
        device="cpu",
        **base_options(base.spec),
    )

    def stop_after_epoch_one(progress: Progress) -> None:
        if progress.epoch == 2 and progress.phase == "train":
            raise TrainingCancelled

    assert train(config, callback=stop_after_epoch_one).status == "cancelled"
    after_one = load_checkpoint(tmp_path / "run" / "best.pt")
    # Epoch 1 trained the classifier alone: every other weight is the base's, bit for bit.
    for name, tensor in after_one.state_dict.items():
        if not name.startswith("fc3."):
            assert torch.equal(tensor, base.state_dict[name]), name
    # Every class of the base stays, in its place; the data's new class comes after them.
    classes = after_one.spec.class_names
    assert classes == (*CLASS_NAMES, "battery")
    assert not torch.equal(after_one.state_dict["fc3.weight"][1], base.state_dict["fc3.weight"][1])
    recipe = after_one.spec.recipe
    assert recipe["transfer"] == {
        "kept": list(CLASS_NAMES),
        "new": ["battery"],
        "without_data": ["cardboard", "paper", "plastic", "trash"],
    }
    assert recipe["base"] == "tiny:v1"
    assert recipe["init_sha256"] == base.sha256
    assert "init_from" not in recipe  # the server's path stays out of the record
    assert recipe["freeze_epochs"] == 1


def test_a_base_with_other_weights_or_architecture_is_refused(
    base_run: Path, site_photos: Path, tmp_path: Path
) -> None:
    base = load_checkpoint(base_run)
    common = {"init_from": str(base_run), "epochs": 2, "workers": 0, "device": "cpu"}
    wrong_digest = make_config(
        "finetune", data=str(site_photos), out=str(tmp_path / "a"), init_sha256="0" * 64, **common
    ).replace(**base_options(base.spec))
    with pytest.raises(CheckpointError, match="not the ones asked for"):
        train(wrong_digest)
    other_arch = make_config("finetune", data=str(site_photos), out=str(tmp_path / "b"), **common)
    with pytest.raises(ValueError, match="keeps the base's architecture"):
        train(other_arch)
    with pytest.raises(ValueError, match="keeps its architecture"):
        base_options(base.spec, model="resnet50")
    with pytest.raises(ValueError, match="architecture options"):
        base_options(base.spec, model_kwargs={"width": 8})
    with pytest.raises(ValueError, match="px photos"):
        base_options(base.spec, input_size=64)


def test_cli_finetunes_from_a_checkpoint_with_its_architecture(
    base_run: Path, site_photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["train", f"--data={site_photos}", f"--out={out}", f"--base={base_run}", "--recipe=finetune"]
    assert main([*args, "--epochs=2", "--batch-size=4", "--workers=0", "--device=cpu", "--no-progress"]) == 0
    spec = load_checkpoint(out / "best.pt").spec
    assert (spec.arch, spec.arch_kwargs, spec.input_size) == ("simple_cnn", {"width": 4, "dropout": 0.5}, 32)
    assert spec.recipe["transfer"]["new"] == ["battery"]
    assert main(["train", f"--data={site_photos}", f"--out={tmp_path / 'x'}", "--recipe=finetune"]) == 2


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_takes_its_base_weights(arch: str, tmp_path: Path) -> None:
    base_classes, classes = CLASS_NAMES, ("battery", "metal", "glass")
    torch.manual_seed(0)
    base = create_model(arch, num_classes=len(base_classes))
    spec = ModelSpec(arch, base_classes, 32, (0.5,) * 3, (0.5,) * 3)
    save_checkpoint(tmp_path / "base.pt", base, spec)
    checkpoint = load_checkpoint(tmp_path / "base.pt")
    model = create_model(base_options(spec)["model"], num_classes=len(classes))
    transfer = transfer_weights(model, checkpoint, classes)
    assert transfer.kept_classes == ("metal", "glass")
    assert transfer.new_classes == ("battery",)
    (weight_key,) = [key for key in transfer.head if key.endswith("weight")]
    state = model.state_dict()
    assert torch.equal(state[weight_key][1], checkpoint.state_dict[weight_key][base_classes.index("metal")])
    assert torch.equal(state[weight_key][2], checkpoint.state_dict[weight_key][base_classes.index("glass")])


def test_frozen_norms_keep_the_base_statistics_while_the_weights_learn(
    site_photos: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    spec = ModelSpec("resnet50", CLASS_NAMES, 32, (0.5,) * 3, (0.5,) * 3)
    save_checkpoint(tmp_path / "base.pt", create_model("resnet50", num_classes=len(CLASS_NAMES)), spec)
    base = load_checkpoint(tmp_path / "base.pt")
    config = make_config(
        "finetune",
        data=str(site_photos),
        out=str(tmp_path / "run"),
        init_from=str(tmp_path / "base.pt"),
        epochs=2,
        freeze_epochs=0,
        freeze_norm=True,
        backbone_lr=0.1,
        batch_size=4,
        workers=0,
        device="cpu",
        amp=False,
        forgetting_limit=1.0,
        early_stop=0,
        **base_options(base.spec),
    )
    assert train(config).status == "completed"
    tuned = load_checkpoint(tmp_path / "run" / "final.pt").state_dict
    statistics = [name for name in tuned if name.endswith(("running_mean", "running_var"))]
    assert statistics
    for name in statistics:
        assert torch.equal(tuned[name], base.state_dict[name]), name
    assert not torch.equal(tuned["conv1.weight"], base.state_dict["conv1.weight"])


def test_frozen_norms_need_a_base(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="freeze_norm needs a base"):
        make_config("improved", data=str(tmp_path), out=str(tmp_path / "run"), freeze_norm=True)


def test_the_backbone_learns_at_its_share_of_the_rate() -> None:
    model = create_model("simple_cnn", num_classes=6, width=4)
    config = make_config("improved", data="x", out="y", lr=0.01, backbone_lr=0.1)
    rates = {
        id(p): group["lr"]
        for group in build_optimizer(model, config, {"fc3"}).param_groups
        for p in group["params"]
    }
    for name, parameter in model.named_parameters():
        assert rates[id(parameter)] == pytest.approx(0.01 if name.startswith("fc3.") else 0.001), name
    # One rate for all: the two groups that resumable checkpoints hold.
    assert len(build_optimizer(model, make_config("improved", data="x", out="y"), {"fc3"}).param_groups) == 2
