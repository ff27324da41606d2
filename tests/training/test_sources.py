"""Several data sets and sources in one run: per-source splits, the held-out site, weighted sampling,
cut-and-paste, starting from another checkpoint, and a tiny run on two tiny sources."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import create_model
from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from tests.training.helpers import CLASS_NAMES, make_image_folder, run_cli, tiny_config
from training.config import DEFAULT_SPLIT, make_config
from training.data import DataError, WeightedEpochSampler, balance_weights
from training.engine import resume, train
from training.explanations import pick_images
from training.paste import BackgroundPaste, object_mask
from training.progress import Progress, TrainingCancelled
from training.split import (
    HOLDOUT,
    MixedManifest,
    create_manifest,
    create_mixed_manifest,
    load_manifest,
    manifest_data_root,
    parse_data_sets,
    parse_source_tags,
    read_source_tags,
    save_manifest,
    split_counts,
)
from training.transfer import transfer_weights

TRASHNET = Path(__file__).resolve().parents[2] / "data" / "trashnet-112.tar.gz"
#: The digest of TrashNet's split that every paper-comparison run has used (seed 0, 70/13/17).
TRASHNET_DIGEST = "35331a93e3949d2a3d245361c5e0d973ea93d10495dd3face0deab3c394c4f93"


def make_tagged_folder(root: Path, sources: dict[str, int]) -> Path:
    """An image folder whose ``manifest.csv`` tags each photo with a source (``count`` per class)."""
    rows = []
    for index, (source, count) in enumerate(sources.items()):
        staging = make_image_folder(root.parent / f"staging-{source}", per_class=count, seed=index)
        for name in CLASS_NAMES:
            (root / name).mkdir(parents=True, exist_ok=True)
            for file in sorted((staging / name).iterdir()):
                target = root / name / f"{source}__{file.name}"
                file.rename(target)
                rows.append({"path": f"{name}/{target.name}", "source": source})
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_the_split_is_stratified_by_source_and_class_and_the_site_is_held_out(tmp_path: Path) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 20, "home": 10, "site": 5})
    cache = tmp_path / "cache"
    manifest, _ = create_manifest(folder, cache, seed=3, fractions=DEFAULT_SPLIT, holdout=["site"])
    again, _ = create_manifest(folder, cache, seed=3, fractions=DEFAULT_SPLIT, holdout=["site"])
    assert again == manifest
    strata = Counter((item.source, manifest.class_names[item.label], item.split) for item in manifest.items)
    for source, count in (("web", 20), ("home", 10)):
        expected = split_counts(count, DEFAULT_SPLIT)
        for name in CLASS_NAMES:
            assert tuple(strata[(source, name, split)] for split in ("train", "val", "test")) == expected
    site = [item for item in manifest.items if item.source == "site"]
    assert len(site) == 5 * len(CLASS_NAMES)
    assert {item.split for item in site} == {HOLDOUT}
    # Never in a training or validation set, nor in "all"; only asked for by name.
    for split in ("train", "val", "test", "all"):
        assert "site" not in manifest.select_sources(split, "x")
    assert manifest.select_sources(HOLDOUT, "x") == ["site"] * len(site)
    assert manifest.holdout == ("site",)


def test_a_held_out_source_that_no_data_set_has_is_refused(tmp_path: Path) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 4})
    with pytest.raises(DataError, match=r"held-out sources \['sd'\]"):
        create_manifest(folder, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT, holdout=["sd"])


def test_a_held_out_source_that_one_run_lacks_is_logged_when_another_is_held_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 4, "sd": 4})
    manifest, _ = create_manifest(
        folder, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT, holdout=["sd", "er"]
    )
    assert manifest.holdout == ("sd",)
    assert set(manifest.select_sources("holdout", "")) == {"sd"}
    assert "held-out sources ['er']" in caplog.text


def test_a_manifest_that_names_photos_by_file_from_the_archives_top_folder_tags_them(tmp_path: Path) -> None:
    for name in ("metal", "glass"):
        (tmp_path / name).mkdir()
    (tmp_path / "manifest.csv").write_text(
        "\ufefffile,class,source\n"  # a byte-order mark, as a spreadsheet writes it
        "waste-extra2-144/metal/rv__a.jpg,metal,rv\n"
        "waste-extra2-144/glass/er__b.jpg,glass,er\n"
        "metal/sub/c.jpg,metal,tp\n",
        encoding="utf-8",
    )
    # The archive's top folder is not a class folder: read without it; a class folder's own sub-folder is.
    assert read_source_tags(tmp_path) == {
        "metal/rv__a.jpg": "rv",
        "glass/er__b.jpg": "er",
        "metal/sub/c.jpg": "tp",
    }
    assert parse_source_tags("path,source\nmetal/a.jpg,aj\n") == {"metal/a.jpg": "aj"}
    assert parse_source_tags("name,origin\nmetal/a.jpg,aj\n") == {}


def test_a_held_out_source_whose_listed_paths_name_no_photo_is_refused(tmp_path: Path) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 4, "sd": 2})
    tags = (folder / "manifest.csv").read_text()
    # er's rows point nowhere: its photos would be trained on as untagged ones.
    (folder / "manifest.csv").write_text(tags + "glass/er__renamed.png,er\n")
    with pytest.raises(DataError, match=r"lists photos of the held-out sources \['er'\]"):
        create_manifest(folder, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT, holdout=["sd", "er"])


def test_trashnets_split_is_unchanged_alone_and_mixed(tmp_path: Path) -> None:
    alone, _ = create_manifest(TRASHNET, tmp_path / "alone", seed=0, fractions=DEFAULT_SPLIT)
    assert alone.digest == TRASHNET_DIGEST
    extra = make_tagged_folder(tmp_path / "extra", {"web": 6, "site": 3})
    mixed, root = create_mixed_manifest(
        parse_data_sets([f"trashnet={TRASHNET}", f"extra={extra}"]),
        tmp_path / "mixed",
        seed=0,
        fractions=DEFAULT_SPLIT,
        holdout=["site"],
    )
    part = mixed.parts[0].manifest
    assert (mixed.parts[0].name, part.digest, part.items) == ("trashnet", TRASHNET_DIGEST, alone.items)
    # Paths of the mixed manifest resolve under its data folder, photos of TrashNet to its own files.
    for path, _ in mixed.select("test")[:3] + mixed.select(HOLDOUT)[:3]:
        assert (root / path).is_file()
    sources = Counter(mixed.select_sources("train"))
    assert set(sources) == {"trashnet", "web"}
    assert sources["trashnet"] == len(alone.select("train"))


def test_a_mixed_manifest_round_trips_and_finds_moved_data(tmp_path: Path) -> None:
    first = make_image_folder(tmp_path / "one", per_class=4)
    second = make_tagged_folder(tmp_path / "two", {"web": 4, "site": 2})
    manifest, root = create_mixed_manifest(
        [("one", str(first)), ("two", str(second))], tmp_path / "data", seed=1, fractions=DEFAULT_SPLIT
    )
    save_manifest(manifest, tmp_path / "manifest.json")
    loaded = load_manifest(tmp_path / "manifest.json")
    assert isinstance(loaded, MixedManifest)
    assert loaded == manifest
    assert manifest_data_root(loaded, tmp_path / "data") == root
    moved = tmp_path / "moved"
    second.rename(moved)
    with pytest.raises(DataError):
        manifest_data_root(loaded, tmp_path / "elsewhere")
    elsewhere = manifest_data_root(loaded, tmp_path / "elsewhere", source={"two": str(moved)})
    assert all((elsewhere / path).is_file() for path, _ in loaded.select("all"))


def test_data_set_names_are_checked() -> None:
    assert parse_data_sets(["a/trashnet-112.tar.gz", "web=b/photos"]) == [
        ("trashnet-112", "a/trashnet-112.tar.gz"),
        ("web", "b/photos"),
    ]
    with pytest.raises(ValueError, match="must differ"):
        parse_data_sets(["x=a", "x=b"])
    with pytest.raises(ValueError, match="data set name"):
        parse_data_sets(["..=a"])


def test_weighted_sampling_draws_the_requested_proportions() -> None:
    # Class 0 has 9 times the photos of class 1; source "big" 4 times those of "small".
    labels = [0] * 720 + [1] * 80
    sources = (["big"] * 576 + ["small"] * 144) + (["big"] * 64 + ["small"] * 16)
    draws = 40_000
    balanced = WeightedEpochSampler(
        balance_weights(labels, sources, class_balance=1.0, source_balance=0.0), seed=0, size=draws
    )
    picked = Counter(labels[index] for index, _ in balanced)
    assert picked[1] / draws == pytest.approx(0.5, abs=0.01)

    root = WeightedEpochSampler(
        balance_weights(labels, sources, class_balance=0.5, source_balance=0.5), seed=0, size=draws
    )
    picked_classes: Counter[int] = Counter()
    picked_sources: Counter[str] = Counter()
    for index, _ in root:
        picked_classes[labels[index]] += 1
        picked_sources[sources[index]] += 1
    # Square-root balancing: class odds 9:1 become 3:1, source odds 4:1 become 2:1.
    assert picked_classes[1] / draws == pytest.approx(0.25, abs=0.01)
    assert picked_sources["small"] / draws == pytest.approx(1 / 3, abs=0.01)
    # The draws and their augmentation seeds depend only on (seed, epoch).
    root.set_epoch(2)
    assert list(root) == list(root)
    assert len({seed for _, seed in root}) == draws


def _object_on_white(size: int = 64) -> Image.Image:
    pixels = np.full((size, size, 3), 235, dtype=np.uint8)
    pixels[16:48, 20:44] = (30, 90, 160)
    return Image.fromarray(pixels)


def test_the_object_of_a_plain_background_photo_is_found_and_pasted(tmp_path: Path) -> None:
    image = _object_on_white()
    mask = object_mask(image)
    assert mask is not None
    inside, outside = mask[20:44, 24:40], np.concatenate([mask[:8].ravel(), mask[-8:].ravel()])
    assert inside.min() > 0.99
    assert outside.max() < 0.01
    assert object_mask(Image.new("RGB", (64, 64), (235, 235, 235))) is None

    Image.new("RGB", (80, 80), (200, 20, 20)).save(tmp_path / "red.png")
    paste = BackgroundPaste(tmp_path, ["red.png"], plain_indices=[0], p=1.0, synthetic=0.0)
    torch.manual_seed(0)
    pasted = np.asarray(paste(image, 0))
    assert tuple(pasted[30, 30]) == (30, 90, 160)  # the object stays
    assert tuple(pasted[2, 2]) == (200, 20, 20)  # the posterboard is gone
    assert paste(image, 1) is image  # not a plain-background photo


def _spec(class_names: tuple[str, ...]) -> ModelSpec:
    return ModelSpec("simple_cnn", class_names, 32, (0.5,) * 3, (0.5,) * 3, arch_kwargs={"width": 4})


def test_starting_from_a_checkpoint_keeps_the_rows_of_shared_classes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = create_model("simple_cnn", num_classes=3, width=4)
    save_checkpoint(tmp_path / "base.pt", base, _spec(("glass", "metal", "paper")))
    checkpoint = load_checkpoint(tmp_path / "base.pt")
    torch.manual_seed(1)
    model = create_model("simple_cnn", num_classes=3, width=4)
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    transfer = transfer_weights(model, checkpoint, ("paper", "trash", "glass"))
    assert transfer.kept_classes == ("paper", "glass")
    assert transfer.new_classes == ("trash",)
    state, source = model.state_dict(), checkpoint.state_dict
    assert torch.equal(state["conv1.weight"], source["conv1.weight"])
    assert torch.equal(state["fc3.weight"][0], source["fc3.weight"][2])  # paper moved to row 0
    assert torch.equal(state["fc3.weight"][2], source["fc3.weight"][0])  # glass moved to row 2
    assert torch.equal(state["fc3.weight"][1], fresh["fc3.weight"][1])  # trash: initialised anew
    assert torch.equal(state["fc3.bias"][1], fresh["fc3.bias"][1])
    wider = create_model("simple_cnn", num_classes=3, width=8)
    with pytest.raises(Exception, match="shape"):
        transfer_weights(wider, checkpoint, ("paper", "trash", "glass"))


def test_a_tiny_run_on_two_tiny_sources(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    for name in CLASS_NAMES:
        (plain / name).mkdir(parents=True)
        for index in range(6):
            _object_on_white(32).rotate(15 * index).save(plain / name / f"{name}{index}.png")
    extra = make_tagged_folder(tmp_path / "extra", {"web": 6, "site": 2})
    config = tiny_config(plain, tmp_path / "run").replace(
        data=(f"plain={plain}", f"extra={extra}"),
        epochs=2,
        workers=0,
        holdout_sources=("site",),
        class_balance=0.5,
        source_balance=0.5,
        grayscale=0.5,
        blur=0.5,
        paste_background=1.0,
        plain_sources=("plain",),
    )
    result = train(config)
    assert result.status == "completed"
    manifest = load_manifest(tmp_path / "run" / "manifest.json")
    assert isinstance(manifest, MixedManifest)
    assert "site" not in manifest.select_sources("train") + manifest.select_sources("val")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["per_source"]) == {"plain", "web"}
    assert sum(row["num_images"] for row in report["per_source"].values()) == report["num_images"]
    spec = load_checkpoint(tmp_path / "run" / "best.pt").spec
    assert spec.recipe["holdout_sources"] == ["site"]
    assert spec.recipe["train_sources"] == ["plain", "web"]
    assert spec.recipe["paste_background"] == 1.0


def test_the_cli_trains_on_two_data_sets_and_evaluates_the_held_out_site(tmp_path: Path) -> None:
    first = make_image_folder(tmp_path / "one", per_class=4)
    second = make_tagged_folder(tmp_path / "two", {"web": 4, "site": 2})
    out = tmp_path / "run"
    common = ["--model=simple_cnn", '--model-kwargs={"width": 4}', "--input-size=32", "--batch-size=8"]
    trained = run_cli(
        "train",
        f"--data=one={first}",
        f"--data=two={second}",
        f"--out={out}",
        *common,
        "--epochs=1",
        "--holdout",
        "site",
        "--class-balance=1",
        "--device=cpu",
        "--workers=0",
        "--no-progress",
    )
    assert trained.returncode == 0, trained.stderr
    evaluated = run_cli(
        "evaluate",
        f"--checkpoint={out / 'best.pt'}",
        f"--manifest={out / 'manifest.json'}",
        "--split=holdout",
        f"--out={tmp_path / 'site'}",
        "--device=cpu",
        "--workers=0",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    assert report["num_images"] == 2 * len(CLASS_NAMES)
    assert list(report["per_source"]) == ["site"]
    assert "site: accuracy" in evaluated.stdout


def test_recipes_that_hold_out_a_source_say_so() -> None:
    config = make_config("general", data=("a=x", "b=y"), out="o")
    assert config.holdout_sources == ("sd", "er")
    assert config.to_dict()["data"] == ["a=x", "b=y"]
    assert type(config).from_dict(config.to_dict()) == config


def test_figures_pick_photos_of_the_asked_sources_in_turn(tmp_path: Path) -> None:
    folder = make_tagged_folder(tmp_path / "extra", {"web": 4, "home": 4, "site": 4})
    manifest, _ = create_manifest(
        folder, tmp_path / "cache", seed=0, fractions=DEFAULT_SPLIT, holdout=["site"]
    )
    picked = pick_images(manifest, split="train+holdout", per_class=3, sources=["site", "home"])
    sources = dict(
        zip(
            manifest.select("train") + manifest.select(HOLDOUT),
            manifest.select_sources("train", "") + manifest.select_sources(HOLDOUT, ""),
            strict=True,
        )
    )
    assert len(picked) == 3 * len(CLASS_NAMES)
    for label in range(len(CLASS_NAMES)):
        of_class = [sources[sample] for sample in picked if sample[1] == label]
        assert of_class == ["site", "home", "site"]


def test_a_run_records_the_checkpoint_it_started_from_and_resumes_without_it(
    image_folder: Path, tmp_path: Path
) -> None:
    base = tiny_config(image_folder, tmp_path / "base").replace(epochs=1, warmup_epochs=0, workers=0)
    train(base)
    base_checkpoint = load_checkpoint(tmp_path / "base" / "best.pt")
    out = tmp_path / "run"

    def stop_in_epoch_two(progress: Progress) -> None:
        if progress.epoch == 2 and progress.phase == "train":
            raise TrainingCancelled

    config = tiny_config(image_folder, out).replace(
        epochs=2, warmup_epochs=0, workers=0, init_from=str(tmp_path / "base" / "best.pt")
    )
    assert train(config, callback=stop_in_epoch_two).status == "cancelled"
    spec = load_checkpoint(out / "best.pt").spec
    assert spec.recipe["init_sha256"] == base_checkpoint.sha256
    # The base may change or go: a run that has epochs of its own resumes from them.
    (tmp_path / "base" / "best.pt").unlink()
    assert resume(out).status == "completed"
    assert load_checkpoint(out / "final.pt").spec.recipe["init_sha256"] == base_checkpoint.sha256
