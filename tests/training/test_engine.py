import json
from pathlib import Path

import pytest
import torch

from models import precision
from models.checkpoint import load_checkpoint
from models.predictor import select_device
from tests.training.helpers import assert_same_weights, checkpoint_weights, tiny_config, without_timing
from training.averaging import weight_average
from training.engine import (
    RunExistsError,
    TrainResult,
    read_environment,
    record_environment,
    resume,
    train,
)
from training.progress import Progress, TrainingCancelled
from training.state import ResumeError, load_resume_state


def test_callback_reports_every_step_and_each_checkpointed_epoch(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    events: list[Progress] = []

    def callback(progress: Progress) -> None:
        events.append(progress)
        if progress.phase == "epoch":
            # The epoch event comes after its checkpoint is on disk.
            assert load_resume_state(out / "resume.pt").epoch == progress.epoch

    result = train(tiny_config(image_folder, out, epochs=2, warmup_epochs=0, workers=0), callback=callback)
    assert result.status == "completed"
    for epoch in (1, 2):
        train_steps = [e for e in events if e.epoch == epoch and e.phase == "train"]
        val_steps = [e for e in events if e.epoch == epoch and e.phase == "val"]
        assert [e.step for e in train_steps] == [1, 2, 3, 4, 5]  # 36 training images, batch 8
        assert {e.steps for e in train_steps} == {5}
        assert [e.step for e in val_steps] == [1]
        assert all(e.epochs == 2 and {"loss", "accuracy"} <= set(e.metrics) for e in train_steps + val_steps)
    assert [(e.epoch, e.phase) for e in events if e.phase == "epoch"] == [(1, "epoch"), (2, "epoch")]
    # The epoch event carries the epoch's history record.
    history = json.loads((out / "history.json").read_text())
    assert [dict(e.metrics) for e in events if e.phase == "epoch"] == history
    # Steps and epochs carry an ETA; the reports between the long steps before and after them come first
    # (no step measured yet) and last.
    stepped = [e for e in events if e.phase in ("train", "val", "epoch")]
    etas = [e.eta_seconds for e in stepped if e.eta_seconds is not None]
    assert len(etas) == len(stepped)
    assert all(eta >= 0 for eta in etas)
    assert stepped[-1].eta_seconds == 0.0
    assert etas[0] > 0
    assert [e.phase for e in events[:2]] == ["prepare", "prepare"]
    assert events[-1].phase == "finish"


def test_cancelling_stops_cleanly_and_the_run_resumes_exactly(
    reference_data: Path, reference_run: TrainResult, tmp_path: Path
) -> None:
    out = tmp_path / "run"

    def cancel_in_epoch_two(progress: Progress) -> None:
        if progress.epoch == 2 and progress.phase == "train" and progress.step == 2:
            raise TrainingCancelled

    result = train(tiny_config(reference_data, out, workers=0), callback=cancel_in_epoch_two)
    assert (result.status, result.epochs_completed) == ("cancelled", 1)
    assert load_resume_state(out / "resume.pt").epoch == 1
    assert not (out / "final.pt").exists()
    assert not (out / "report.json").exists()

    resumed = resume(out)
    assert (resumed.status, resumed.epochs_completed) == ("completed", 3)
    reference = reference_run.out_dir
    assert_same_weights(checkpoint_weights(out / "final.pt"), checkpoint_weights(reference / "final.pt"))
    assert_same_weights(checkpoint_weights(out / "best.pt"), checkpoint_weights(reference / "best.pt"))
    history = json.loads((out / "history.json").read_text())
    assert without_timing(history) == without_timing(json.loads((reference / "history.json").read_text()))
    # Each process that kept an epoch is on record, from its first one.
    processes = read_environment(out / "environment.json")
    assert [process["first_epoch"] for process in processes] == [1, 2]
    assert all({"device", "precision", "torch"} <= set(process) for process in processes)


def test_a_run_that_mixes_batches_resumes_exactly(reference_data: Path, tmp_path: Path) -> None:
    mixing = {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "auto_augment": "trivial", "random_erasing": 0.25}
    uninterrupted = train(tiny_config(reference_data, tmp_path / "whole", workers=0, **mixing))
    assert uninterrupted.status == "completed"

    def cancel_in_epoch_two(progress: Progress) -> None:
        if progress.epoch == 2 and progress.phase == "train" and progress.step == 2:
            raise TrainingCancelled

    out = tmp_path / "interrupted"
    train(tiny_config(reference_data, out, workers=0, **mixing), callback=cancel_in_epoch_two)
    assert resume(out).status == "completed"
    whole = checkpoint_weights(tmp_path / "whole" / "final.pt")
    assert_same_weights(checkpoint_weights(out / "final.pt"), whole)
    # Mixing changes training: the same run without it ends elsewhere.
    plain = train(tiny_config(reference_data, tmp_path / "plain", workers=0))
    assert plain.status == "completed"
    final_plain = checkpoint_weights(tmp_path / "plain" / "final.pt")
    assert any(not torch.equal(final_plain[name], whole[name]) for name in whole)


def test_a_process_whose_epochs_were_not_kept_is_replaced_on_record(tmp_path: Path) -> None:
    path = tmp_path / "environment.json"
    record_environment(path, 1, {"device": "a"})
    record_environment(path, 4, {"device": "b"})
    # Killed after recording epoch 4 but before keeping it: the next process starts at epoch 4 again.
    record_environment(path, 4, {"device": "c"})
    assert read_environment(path) == [{"first_epoch": 1, "device": "a"}, {"first_epoch": 4, "device": "c"}]
    assert read_environment(tmp_path / "missing.json") == []


def test_a_run_stopped_in_its_first_epoch_restarts_from_its_saved_config(
    reference_data: Path, reference_run: TrainResult, tmp_path: Path
) -> None:
    out = tmp_path / "run"

    def cancel_in_epoch_one(progress: Progress) -> None:
        if progress.epoch == 1 and progress.step == 3:
            raise TrainingCancelled

    assert (
        train(tiny_config(reference_data, out, workers=0), callback=cancel_in_epoch_one).epochs_completed == 0
    )
    assert not (out / "resume.pt").exists()
    assert resume(out).status == "completed"
    assert_same_weights(
        checkpoint_weights(out / "final.pt"), checkpoint_weights(reference_run.out_dir / "final.pt")
    )


def test_resume_file_is_weights_only(reference_run: TrainResult) -> None:
    payload = torch.load(reference_run.out_dir / "resume.pt", weights_only=True)
    assert payload["format"] == "trashcam.resume"
    assert payload["epoch"] == 3
    assert isinstance(payload["rng"]["torch"], torch.Tensor)
    assert isinstance(payload["rng"]["python"]["state"], torch.Tensor)
    assert payload["optimizer"]["state"]
    assert payload["scheduler"]["last_epoch"] == 15
    assert len(payload["history"]) == 3
    assert payload["config"]["seed"] == 7


def test_a_finished_run_resumes_to_the_same_outputs(reference_run: TrainResult, tmp_path: Path) -> None:
    # Resuming after the last epoch (e.g. after a kill during the final report) only redoes the report.
    final = checkpoint_weights(reference_run.out_dir / "final.pt")
    result = resume(reference_run.out_dir)
    assert result.status == "completed"
    assert result.test_accuracy == reference_run.test_accuracy
    assert_same_weights(checkpoint_weights(reference_run.out_dir / "final.pt"), final)


def test_a_run_folder_is_not_overwritten(reference_run: TrainResult, reference_data: Path) -> None:
    with pytest.raises(RunExistsError):
        train(tiny_config(reference_data, reference_run.out_dir))


def test_bf16_autocast_on_the_cpu(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bf16 arithmetic is exercised whatever the CPU: emulated bf16 is slow, not wrong.
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert select_device("cpu") == torch.device("cpu")
    result = train(
        tiny_config(image_folder, tmp_path / "run", epochs=1, warmup_epochs=0, amp=True, workers=0)
    )
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert result.status == "completed"
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))
    [process] = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert (process["first_epoch"], process["precision"]) == (1, "bf16")
    # Weights stay fp32; only the arithmetic is bf16.
    assert all(t.dtype == torch.float32 for t in checkpoint_weights(tmp_path / "run" / "final.pt").values())


def test_a_run_can_be_shortened_on_resume(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"

    def cancel_in_epoch_two(progress: Progress) -> None:
        if progress.epoch == 2 and progress.phase == "train":
            raise TrainingCancelled

    config = tiny_config(image_folder, out, epochs=6, warmup_epochs=0, workers=0, schedule="cosine")
    assert train(config, callback=cancel_in_epoch_two).status == "cancelled"
    with pytest.raises(ResumeError, match="must be more"):
        resume(out, epochs=1)
    result = resume(out, epochs=3)
    assert (result.status, result.epochs_completed) == ("completed", 3)
    history = json.loads((out / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    # The cosine decay now ends at epoch 3: its last epoch starts well below the rate of a 6-epoch run.
    assert history[2]["lr"] < 0.5 * history[0]["lr"]
    assert json.loads((out / "config.json").read_text())["epochs"] == 3


def test_a_split_without_test_photos_trains_on_more_and_reports_no_test(
    image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = tiny_config(image_folder, out, epochs=1, warmup_epochs=0, workers=0, split=(0.75, 0.25, 0.0))
    result = train(config)
    assert (result.status, result.test_accuracy) == ("completed", None)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert sum(counts["test"].values()) == 0
    assert sum(counts["train"].values()) == 6 * 6  # 8 photos a class: 6 to train on, 2 to validate
    assert (out / "best.pt").is_file()
    assert (out / "final.pt").is_file()
    assert not (out / "report.json").exists()


def test_a_cancel_is_heard_before_the_data_is_extracted(image_folder: Path, tmp_path: Path) -> None:
    def cancel_at_once(progress: Progress) -> None:
        raise TrainingCancelled

    result = train(tiny_config(image_folder, tmp_path / "run", workers=0), callback=cancel_at_once)
    assert (result.status, result.epochs_completed) == ("cancelled", 0)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_cancel_is_heard_between_the_final_steps_and_the_run_resumes(
    image_folder: Path, tmp_path: Path
) -> None:
    phases: list[str] = []

    def cancel_when_finishing(progress: Progress) -> None:
        phases.append(progress.phase)
        if progress.phase == "finish":
            raise TrainingCancelled

    out = tmp_path / "run"
    result = train(tiny_config(image_folder, out, epochs=2, workers=0), callback=cancel_when_finishing)
    assert (result.status, result.epochs_completed) == ("cancelled", 2)
    assert phases[0] == "prepare"
    assert not (out / "report.json").exists()
    finished = resume(out)
    assert finished.status == "completed"
    assert (out / "report.json").is_file()


def test_a_run_that_averages_its_last_epochs_keeps_their_mean_and_resumes_to_it(
    image_folder: Path, tmp_path: Path
) -> None:
    """``average_epochs=2`` of 3: best.pt is the mean of epochs 2 and 3's weights, final.pt the last
    epoch's own, and a run cancelled inside the window resumes to the same mean to the bit."""
    out = tmp_path / "run"
    per_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def keep_weights(progress: Progress) -> None:
        if progress.phase == "epoch":
            per_epoch[progress.epoch] = load_resume_state(out / "resume.pt").model

    config = tiny_config(
        image_folder, out, workers=0, keep_epoch="last", average_epochs=2, split=(0.7, 0.3, 0.0)
    )
    assert train(config, callback=keep_weights).status == "completed"
    best, final = checkpoint_weights(out / "best.pt"), checkpoint_weights(out / "final.pt")
    assert_same_weights(final, per_epoch[3])
    floating = [name for name, tensor in best.items() if tensor.is_floating_point()]
    for name in floating:
        mean = (per_epoch[2][name] + per_epoch[3][name]) / 2
        torch.testing.assert_close(best[name], mean, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(best[floating[0]], final[floating[0]])
    history = json.loads((out / "history.json").read_text())
    assert "averaged_val_accuracy" not in history[0]
    # best.pt carries its own weights' figures, final.pt the last epoch's.
    kept_metrics = load_checkpoint(out / "best.pt").spec.metrics
    assert kept_metrics["val_accuracy"] == history[-1]["averaged_val_accuracy"]
    assert kept_metrics["val_loss"] == history[-1]["averaged_val_loss"]
    final_metrics = load_checkpoint(out / "final.pt").spec.metrics
    assert final_metrics["val_loss"] == history[-1]["val_loss"]
    assert "averaged_val_loss" not in final_metrics

    def cancel_after_epoch_two(progress: Progress) -> None:
        if progress.phase == "epoch" and progress.epoch == 2:
            raise TrainingCancelled

    interrupted = tmp_path / "interrupted"
    config = config.model_copy(update={"out": str(interrupted)})
    assert train(config, callback=cancel_after_epoch_two).status == "cancelled"
    assert resume(interrupted).status == "completed"
    assert_same_weights(checkpoint_weights(interrupted / "best.pt"), best)

    # Made longer, the window moves to the new last two epochs: the old mean is not carried into it.
    assert resume(out, epochs=5, callback=keep_weights).status == "completed"
    extended = checkpoint_weights(out / "best.pt")
    for name in floating:
        mean = (per_epoch[4][name] + per_epoch[5][name]) / 2
        torch.testing.assert_close(extended[name], mean, rtol=1e-5, atol=1e-6, msg=name)


def test_the_weight_average_averages_batch_norm_statistics_and_keeps_its_counter() -> None:
    """Batch norm's statistics are averaged like weights; its integer batch counter takes the latest
    value (an average of it would divide integers, which CUDA refuses)."""
    norm = torch.nn.BatchNorm1d(3)
    average = weight_average(norm)
    seen = []
    for step in range(3):
        norm.train()(torch.randn(16, 3) + step)
        average.update_parameters(norm)
        seen.append(norm.state_dict()["running_mean"].clone())
    state = average.module.state_dict()
    torch.testing.assert_close(state["running_mean"], torch.stack(seen).mean(dim=0))
    assert state["num_batches_tracked"].dtype == torch.int64
    assert int(state["num_batches_tracked"]) == 3


def test_averaging_epochs_needs_the_last_epoch_kept(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set keep_epoch to 'last'"):
        tiny_config(image_folder, tmp_path / "run", average_epochs=2)
    with pytest.raises(ValueError, match="at most epochs"):
        tiny_config(image_folder, tmp_path / "run", keep_epoch="last", average_epochs=4)


def test_a_run_that_keeps_its_last_epoch_serves_the_last_epochs_weights(
    reference_data: Path, tmp_path: Path
) -> None:
    """With ``keep_epoch="last"`` the model is the last epoch's, whatever its validation accuracy: on a
    few dozen validation photos choosing an epoch by accuracy is mostly noise."""
    result = train(tiny_config(reference_data, tmp_path / "run", keep_epoch="last", split=(0.7, 0.3, 0.0)))
    assert result.status == "completed"
    assert result.best_epoch == result.epochs_completed == 3
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert result.best_val_accuracy == history[-1]["val_accuracy"]
    # No test photos and no base to hold to: best.pt's weights are final.pt's.
    assert_same_weights(
        checkpoint_weights(tmp_path / "run" / "best.pt"), checkpoint_weights(tmp_path / "run" / "final.pt")
    )
    assert load_checkpoint(tmp_path / "run" / "best.pt").spec.recipe["keep_epoch"] == "last"
