import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from tests.training.helpers import make_image_folder, tiny_config
from training.engine import train
from training.interpolate import best_alpha, check_compatible, main
from training.weights import interpolate


@pytest.fixture(scope="module")
def start_and_end(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny model and a model fine-tuned from it (its run folder holds the manifest)."""
    root = tmp_path_factory.mktemp("interpolate")
    data = make_image_folder(root / "images")
    train(tiny_config(data, root / "start", epochs=1, warmup_epochs=0, workers=0))
    start = root / "start" / "best.pt"
    train(tiny_config(data, root / "end", epochs=2, warmup_epochs=0, workers=0, init_from=str(start)))
    return start, root / "end" / "best.pt", root / "end"


def test_interpolation_mixes_floating_tensors_and_keeps_the_ends_counters() -> None:
    start = {"weight": torch.zeros(3), "half": torch.zeros(2, dtype=torch.float16), "steps": torch.tensor(4)}
    end = {
        "weight": torch.ones(3),
        "half": torch.full((2,), 2.0, dtype=torch.float16),
        "steps": torch.tensor(9),
    }
    assert torch.equal(interpolate(start, end, 0.0)["weight"], start["weight"])
    assert torch.equal(interpolate(start, end, 1.0)["weight"], end["weight"])
    mixed = interpolate(start, end, 0.25)
    assert torch.allclose(mixed["weight"], torch.full((3,), 0.25))
    assert mixed["half"].dtype == torch.float16
    assert torch.allclose(mixed["half"].float(), torch.full((2,), 0.5))
    assert int(mixed["steps"]) == 9


def test_the_best_alpha_wins_and_a_tie_goes_to_the_fine_tuned_end() -> None:
    assert best_alpha({0.0: 0.5, 0.5: 0.7, 1.0: 0.6}) == 0.5
    assert best_alpha({0.0: 0.7, 0.5: 0.7, 1.0: 0.6}) == 0.5


def test_checkpoints_of_other_classes_are_refused(start_and_end: tuple[Path, Path, Path]) -> None:
    start, end, _ = start_and_end
    first, second = load_checkpoint(start), load_checkpoint(end)
    check_compatible(first, second)
    renamed = type(second)(
        spec=type(second.spec).from_dict(
            {**second.spec.to_dict(), "class_names": list(reversed(second.spec.class_names))}
        ),
        state_dict=second.state_dict,
        sha256=second.sha256,
    )
    with pytest.raises(ValueError, match="differ in classes"):
        check_compatible(first, renamed)


def test_cli_scores_each_alpha_and_writes_the_chosen_one_with_its_lineage(
    start_and_end: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start, trained, run = start_and_end
    # The end as a calibrated model is: its temperature fits its own weights only.
    end = tmp_path / "end.pt"
    checkpoint = load_checkpoint(trained)
    calibrated = {**checkpoint.spec.to_dict(), "calibration": {"temperature": 2.0}}
    save_checkpoint(end, checkpoint.state_dict, ModelSpec.from_dict(calibrated))
    out = tmp_path / "wise.pt"
    argv = ["--start", str(start), "--end", str(end), "--manifest", str(run / "manifest.json")]
    assert main([*argv, "--alphas", "0", "0.5", "1", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    scores = {row["alpha"]: row["accuracy"] for row in record["scores"]}
    assert sorted(scores) == [0.0, 0.5, 1.0]
    assert record["alpha"] == best_alpha(scores)
    chosen = load_checkpoint(out)
    lineage = chosen.spec.recipe["weight_interpolation"]
    assert lineage["start_sha256"] == load_checkpoint(start).sha256
    assert lineage["end_sha256"] == load_checkpoint(end).sha256
    assert chosen.spec.calibration == {}
    assert chosen.sha256 == record["sha256"]
    expected = interpolate(
        load_checkpoint(start).state_dict, load_checkpoint(end).state_dict, record["alpha"]
    )
    assert all(torch.equal(chosen.state_dict[name], tensor) for name, tensor in expected.items())
    assert f"chose alpha {record['alpha']:.2f}" in capsys.readouterr().out


def test_cli_refuses_an_alpha_outside_zero_to_one(
    start_and_end: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    start, end, run = start_and_end
    argv = ["--start", str(start), "--end", str(end), "--manifest", str(run / "manifest.json")]
    with pytest.raises(SystemExit):
        main([*argv, "--alphas", "1.5", "--out", str(tmp_path / "wise.pt")])
