import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.checkpoint import load_model
from models.transforms import build_eval_transform
from tests.training.helpers import (
    assert_same_weights,
    checkpoint_weights,
    cli_train_args,
    make_image_folder,
    run_cli,
    without_timing,
)
from training.cli import main
from training.engine import TrainResult
from training.split import Manifest, load_manifest
from training.state import load_resume_state


def test_kill_and_resume_gives_identical_weights(
    reference_data: Path, reference_run: TrainResult, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    killed = run_cli(*cli_train_args(reference_data, out), "--kill-after-epoch=1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_resume_state(out / "resume.pt").epoch == 1
    assert not (out / "final.pt").exists()

    resumed = run_cli("resume", f"--out={out}", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert "completed: 3 epochs" in resumed.stdout
    reference = reference_run.out_dir
    assert_same_weights(checkpoint_weights(out / "final.pt"), checkpoint_weights(reference / "final.pt"))
    assert_same_weights(checkpoint_weights(out / "best.pt"), checkpoint_weights(reference / "best.pt"))
    history = json.loads((out / "history.json").read_text())
    assert without_timing(history) == without_timing(json.loads((reference / "history.json").read_text()))


def _hand_check(
    report: dict[str, object], checkpoint: Path, root: Path, samples: list[tuple[str, int]]
) -> None:
    """Predict every test image one at a time and count precision and recall by hand."""
    model, spec = load_model(checkpoint)
    transform = build_eval_transform(spec)
    pairs = []
    with torch.no_grad():
        for path, label in samples:
            with Image.open(root / path) as image:
                logits = model(transform(image.convert("RGB")).unsqueeze(0))
            pairs.append((label, int(logits.argmax())))
    per_class = report["per_class"]
    assert isinstance(per_class, dict)
    for index, name in enumerate(spec.class_names):
        tp = sum(1 for t, p in pairs if t == index and p == index)
        predicted = sum(1 for _, p in pairs if p == index)
        actual = sum(1 for t, _ in pairs if t == index)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert per_class[name] == {
            "precision": pytest.approx(precision),
            "recall": pytest.approx(recall),
            "f1": pytest.approx(f1),
            "support": actual,
        }
    assert report["accuracy"] == pytest.approx(sum(t == p for t, p in pairs) / len(pairs))
    counts = Counter(pairs)
    assert report["confusion_matrix"] == [
        [counts[(t, p)] for p in range(len(spec.class_names))] for t in range(len(spec.class_names))
    ]


def test_evaluate_cli_matches_a_hand_check(
    reference_run: TrainResult, reference_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = reference_run.out_dir
    manifest = load_manifest(run / "manifest.json")
    assert isinstance(manifest, Manifest)
    args = ["evaluate", f"--checkpoint={run / 'final.pt'}", "--workers=0"]
    assert main([*args, f"--manifest={run / 'manifest.json'}", f"--out={tmp_path / 'm'}"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    by_manifest = json.loads((tmp_path / "m" / "report.json").read_text())
    assert (tmp_path / "m" / "confusion_matrix.png").stat().st_size > 0
    assert by_manifest["num_images"] == len(manifest.select("test"))
    _hand_check(by_manifest, run / "final.pt", reference_data, manifest.select("test"))

    # Splitting the data set again with the checkpoint's seed gives the very same test set.
    assert main([*args, f"--data={reference_data}", f"--out={tmp_path / 'd'}"]) == 0
    by_data = json.loads((tmp_path / "d" / "report.json").read_text())
    assert by_data["manifest_digest"] == manifest.digest
    assert by_data["confusion_matrix"] == by_manifest["confusion_matrix"]

    assert main([*args, f"--manifest={run / 'manifest.json'}", "--split=all", f"--out={tmp_path / 'a'}"]) == 0
    everything = json.loads((tmp_path / "a" / "report.json").read_text())
    assert everything["num_images"] == len(manifest.items)


def test_cli_reports_bad_input_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["resume", f"--out={tmp_path}"]) == 2
    assert (
        main(["evaluate", f"--checkpoint={tmp_path / 'none.pt'}", f"--manifest={tmp_path / 'm.json'}"]) == 2
    )
    assert (
        main(["train", f"--data={tmp_path / 'missing'}", f"--out={tmp_path / 'run'}", "--model=simple_cnn"])
        == 2
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 1 MB (a tmpfs), which a run's checkpoints do not fit in."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_run_on_a_full_disk_ends_with_one_line_that_says_so(small_disk: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "photos", per_class=5)
    result = run_cli(*cli_train_args(data, small_disk / "run"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "the disk is full: no space left to write" in result.stderr
    assert str(small_disk / "run") in result.stderr
    assert not [path.name for path in (small_disk / "run").iterdir() if path.name.startswith(".")]
