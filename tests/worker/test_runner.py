import io
import json
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry
from PIL import Image
from sqlalchemy.exc import IntegrityError, OperationalError

import worker.tasks.heatmaps
import worker.tasks.training
from core.jobs import JOB_FORMAT, DatabaseAwayError, HeatmapParams, JobStore, NewerRecordError, TrainingParams
from core.model_manager import model_store
from core.queue import DATABASE_RETRY_SECONDS, NEWER_RECORD_RETRY_SECONDS
from core.settings import Settings
from models.predictor import Predictor
from tests.app.conftest import png_bytes, tiny_checkpoint
from tests.core.conftest import store_record, stored_record, training_params
from tests.training.helpers import make_image_folder
from training.config import make_config
from training.progress import Progress, TrainingCancelled
from worker.progress import JobProgress, LeaseLost
from worker.runner import run_heatmap_job, run_training_job, serving_manager

TINY: dict[str, Any] = {
    "model": "simple_cnn",
    "model_kwargs": {"width": 4},
    "epochs": 2,
    "batch_size": 8,
    "input_size": 32,
    "device": "cpu",
    "workers": 0,
}


def training_job(jobs: JobStore, data: Path, *, processes: int = 1, **changes: Any) -> str:
    config = make_config(data=str(data), out="elsewhere", **{**TINY, **changes})
    params = TrainingParams(name="tiny", config=config, source="test", make_default=True, processes=processes)
    return jobs.create(params).id


def test_a_training_job_registers_a_model_version(jobs: JobStore, settings: Settings, tmp_path: Path) -> None:
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5))
    job = run_training_job(job_id, settings)
    assert job.state == "succeeded", job.error
    assert (job.epoch, job.epochs, job.progress) == (2, 2, 1.0)
    assert len(job.history) == 2
    assert {"train_loss", "val_accuracy"} <= set(job.history[0])
    assert job.result["model"] == {"name": "tiny", "version": "v1"}
    store = model_store(settings)
    assert store.default() is not None
    assert store.get("tiny").spec.metrics["test_accuracy"] == job.result["test_accuracy"]
    assert not jobs.locked(job_id)
    # The run keeps its record and report, not the checkpoints: the model lives in the store.
    run = jobs.folder(job_id) / "run"
    assert {"history.json", "report.json", "manifest.json"} <= {p.name for p in run.iterdir()}
    assert not any(run.glob("*.pt"))
    assert store.get("tiny").path.is_file()
    # Running a finished job again (a redelivered message) changes nothing.
    assert run_training_job(job_id, settings).state == "succeeded"
    assert [v.version for v in store.versions("tiny")] == ["v1"]


def test_a_job_asking_for_two_processes_trains_in_them_and_registers_its_model(
    jobs: JobStore, settings: Settings, tmp_path: Path
) -> None:
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5), processes=2)
    job = run_training_job(job_id, settings)
    assert job.state == "succeeded", job.error
    assert (job.epoch, job.epochs, job.progress) == (2, 2, 1.0)
    assert [record["epoch"] for record in job.history] == [1, 2]
    assert job.result["model"] == {"name": "tiny", "version": "v1"}
    assert job.result["test_accuracy"] is not None
    run = jobs.folder(job_id) / "run"
    assert json.loads((run / "environment.json").read_text())[0]["processes"] == 2
    store = model_store(settings)
    assert store.get("tiny").spec.metrics["test_accuracy"] == job.result["test_accuracy"]


def test_a_job_in_two_processes_stops_them_when_cancelled_and_keeps_its_run(
    jobs: JobStore, settings: Settings, tmp_path: Path
) -> None:
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5), processes=2, epochs=40)

    def cancel_after_the_first_epoch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and jobs.get(job_id).epoch < 1:
            time.sleep(0.2)
        jobs.request_cancel(job_id)

    canceller = threading.Thread(target=cancel_after_the_first_epoch)
    canceller.start()
    started = time.monotonic()
    job = run_training_job(job_id, settings)
    canceller.join()
    assert job.state == "cancelled"
    assert 1 <= job.epoch < 40
    assert time.monotonic() - started < 100
    # No process of the run is left: nothing writes its history any more.
    history = (jobs.folder(job_id) / "run" / "history.json").read_text()
    time.sleep(2.5)
    assert (jobs.folder(job_id) / "run" / "history.json").read_text() == history
    assert (jobs.folder(job_id) / "run" / "resume.pt").is_file()


def test_a_job_whose_processes_fail_records_what_they_said(
    jobs: JobStore, settings: Settings, tmp_path: Path
) -> None:
    # Batches of 8 do not split over 3 processes; each process says so, and the job records it.
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5), processes=3)
    job = run_training_job(job_id, settings)
    assert job.state == "failed"
    assert job.error is not None
    assert "3 training processes stopped with status" in job.error
    assert "batch_size 8 does not split over 3 processes" in job.error
    assert str(tmp_path) not in job.error  # the server's folders stay private


def test_a_job_another_worker_holds_is_left_alone(jobs: JobStore, settings: Settings, tmp_path: Path) -> None:
    job_id = training_job(jobs, tmp_path / "missing")
    lease = jobs.lease(job_id, 30)
    assert lease.acquire()
    assert run_training_job(job_id, settings).state == "queued"
    lease.release()


def test_a_job_cancelled_while_queued_never_runs(jobs: JobStore, settings: Settings, tmp_path: Path) -> None:
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5))
    jobs.request_cancel(job_id)
    assert run_training_job(job_id, settings).state == "cancelled"
    assert not (jobs.folder(job_id) / "run").exists()


def test_a_failing_job_records_why(jobs: JobStore, settings: Settings, tmp_path: Path) -> None:
    job_id = training_job(jobs, tmp_path / "missing")
    job = run_training_job(job_id, settings)
    assert job.state == "failed"
    assert job.error is not None
    assert "missing" in job.error
    assert jobs.get(job_id).state == "failed"


def test_a_cancel_is_heard_between_long_steps_at_once(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    lease = jobs.lease(job.id, 30)
    assert lease.acquire()
    # A long throttle: a step report just made would hold back the next one, a long step's must not.
    progress = JobProgress(jobs, job, lease, interval=3600.0)
    progress(Progress(phase="train", epoch=1, epochs=4, step=1, steps=10, metrics={"loss": 1.0}))
    progress(Progress(phase="prepare", epoch=0, epochs=4, step=0, steps=0))
    assert jobs.get(job.id).history == []  # nothing recorded for it
    jobs.request_cancel(job.id)
    with pytest.raises(TrainingCancelled, match="was cancelled"):
        progress(Progress(phase="finish", epoch=4, epochs=4, step=0, steps=0))


def test_progress_renews_the_lock_and_raises_on_cancel(jobs: JobStore) -> None:
    job = jobs.create(training_params())
    lease = jobs.lease(job.id, 30)
    assert lease.acquire()
    progress = JobProgress(jobs, job, lease, interval=0.0)
    progress(
        Progress(phase="train", epoch=1, epochs=4, step=5, steps=10, metrics={"loss": 1.0}, eta_seconds=12.0)
    )
    stored = jobs.get(job.id)
    assert (stored.epoch, stored.progress, stored.eta_seconds) == (1, 0.125, 12.0)
    assert stored.metrics == {"train_loss": 1.0}
    jobs.request_cancel(job.id)
    with pytest.raises(TrainingCancelled, match="was cancelled"):
        progress(Progress(phase="train", epoch=1, epochs=4, step=6, steps=10))
    lease.lost.set()
    with pytest.raises(LeaseLost):
        progress(Progress(phase="train", epoch=1, epochs=4, step=7, steps=10))
    lease.release()


def test_a_heatmap_job_writes_overlays_and_a_manifest(
    jobs: JobStore, settings: Settings, tmp_path: Path
) -> None:
    job = jobs.create(HeatmapParams(method="gradcam", alpha=0.4, colormap="turbo"))
    inputs = jobs.files(job.id).inputs
    inputs.mkdir()
    (inputs / "a.png").write_bytes(png_bytes(size=(30, 20)))
    (inputs / "b.png").write_bytes(png_bytes(size=(16, 16)))
    (inputs / "broken.jpg").write_bytes(b"not a photo")
    # An archive's folders are kept in the manifest's names: two photos of one name stay apart.
    (inputs / "site-a").mkdir()
    (inputs / "site-a" / "a.png").write_bytes(png_bytes(size=(24, 24)))
    settings.model_path = tiny_checkpoint(tmp_path / "tiny.pt")
    manager = serving_manager(settings)

    def predictor() -> Predictor:
        return manager.predictor

    done = run_heatmap_job(job.id, settings, predictor)
    assert done.state == "succeeded", done.error
    assert done.result["images"] == 4
    assert done.result["failed"] == 1
    assert done.eta_seconds == 0.0  # counted down as the photos were done, none left
    with zipfile.ZipFile(jobs.files(job.id).result_zip) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert manifest["model"]["name"] == "tiny"
        by_file = {entry["file"]: entry for entry in manifest["images"]}
        assert set(by_file) == {"a.png", "b.png", "broken.jpg", "site-a/a.png"}
        assert "not an image" in by_file["broken.jpg"]["error"]
        assert by_file["a.png"]["overlay"] != by_file["b.png"]["overlay"]
        overlay = Image.open(io.BytesIO(archive.read(by_file["a.png"]["overlay"])))
        assert overlay.size == (30, 20)
        heatmap = Image.open(io.BytesIO(archive.read(by_file["a.png"]["heatmap"])))
        assert heatmap.mode == "L"
        assert sum(p["probability"] for p in by_file["b.png"]["predictions"]) == pytest.approx(1.0, abs=1e-5)
        # An uncalibrated model says so, and is never unsure; every entry carries its energy score.
        assert by_file["b.png"]["calibrated"] is False
        assert by_file["b.png"]["unsure"] is False
        assert isinstance(by_file["b.png"]["energy"], float)


def test_a_jobs_error_names_no_server_folder(settings: Settings, tmp_path: Path) -> None:
    from core.redaction import path_labels
    from worker.runner import _public_error

    folder = settings.jobs_dir / "abc"
    error = FileNotFoundError(
        f"{folder}/run/data/x.jpg; {settings.models_dir}/se/v1/model.pt; /home/someone/elsewhere/y.pt"
    )
    text = _public_error(error, folder, path_labels(settings))
    assert text == "FileNotFoundError: <job>/run/data/x.jpg; <models>/se/v1/model.pt; y.pt"


def test_a_data_root_link_changed_after_submission_fails_the_job(
    jobs: JobStore, settings: Settings, tmp_path: Path
) -> None:
    root = settings.resolved_data_root
    root.mkdir(parents=True, exist_ok=True)
    inside = make_image_folder(root / "photos", per_class=5)
    outside = make_image_folder(tmp_path / "outside", per_class=5)
    (root / "site").symlink_to(inside)  # checked at submission: it stays inside
    job_id = training_job(jobs, root / "site")
    (root / "site").unlink()
    (root / "site").symlink_to(outside)  # changed before a worker takes the job
    job = run_training_job(job_id, settings)
    assert job.state == "failed"
    assert job.error == "DataOutsideRootError: site now leads outside the data root"
    # A link inside the data set that leaves the root is refused too.
    (inside / "glass" / "extra.png").symlink_to(next((outside / "glass").iterdir()))
    job = run_training_job(training_job(jobs, inside), settings)
    assert job.state == "failed"
    assert job.error == (
        "DataOutsideRootError: photos now holds links that lead outside the data root: glass/extra.png"
    )


@pytest.mark.parametrize("kind", ["training", "heatmaps"])
def test_a_job_whose_record_a_newer_version_wrote_is_put_back_untouched(
    kind: str, jobs: JobStore, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = (
        training_params()
        if kind == "training"
        else HeatmapParams(method="gradcam", colormap="jet", alpha=0.5)
    )
    job = jobs.create(params)
    store_record(jobs, job.id, {**json.loads(stored_record(jobs, job.id)), "format": JOB_FORMAT + 1})
    before = stored_record(jobs, job.id)

    def run() -> object:
        if kind == "training":
            return run_training_job(job.id, settings)
        return run_heatmap_job(job.id, settings, lambda: pytest.fail("no model is needed"))

    with pytest.raises(NewerRecordError):
        run()
    assert stored_record(jobs, job.id) == before
    assert not jobs.locked(job.id)
    assert jobs.heartbeat(job.id) is None
    # The Celery task puts its message back, for a worker of the newer version, and does not fail it.
    task = worker.tasks.training.train_model if kind == "training" else worker.tasks.heatmaps.explain_batch
    module = worker.tasks.training if kind == "training" else worker.tasks.heatmaps
    monkeypatch.setattr(module, "get_settings", lambda: settings)
    retries: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retries.append(options)
        return Retry("put back")

    monkeypatch.setattr(task, "retry", retry)
    with pytest.raises(Retry):
        task(job.id)
    assert [r["countdown"] for r in retries] == [NEWER_RECORD_RETRY_SECONDS]
    assert isinstance(retries[0]["exc"], NewerRecordError)
    # As often as it takes: Celery's default would give up after 3 and drop the message.
    assert task.max_retries is None
    assert stored_record(jobs, job.id) == before


@pytest.mark.parametrize("change", [{"state": "paused"}, {"state": "cancelled", "finished_at": 1.0}])
def test_a_newer_record_this_version_cannot_parse_or_that_has_finished_is_not_failed(
    change: dict[str, Any], jobs: JobStore, settings: Settings
) -> None:
    job = jobs.create(training_params())
    newer = {**json.loads(stored_record(jobs, job.id)), "format": JOB_FORMAT + 1, **change}
    store_record(jobs, job.id, newer, state=change["state"])
    before = stored_record(jobs, job.id)
    if change["state"] == "paused":  # a state this version does not know: put back, not "not found"
        with pytest.raises(NewerRecordError):
            run_training_job(job.id, settings)
    else:  # finished: nothing to do and nothing to write, so nothing is put back either
        assert run_training_job(job.id, settings).state == "cancelled"
    assert stored_record(jobs, job.id) == before
    assert not jobs.locked(job.id)


def test_a_job_stored_beyond_todays_limits_is_failed_not_run(
    jobs: JobStore, settings: Settings, tmp_path: Path
) -> None:
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5))
    record = json.loads(stored_record(jobs, job_id))
    record["params"]["processes"] = 128  # allowed once, over today's limit of 64
    store_record(jobs, job_id, record)
    assert jobs.get(job_id).params.processes == 128  # type: ignore[union-attr]
    job = run_training_job(job_id, settings)
    assert job.state == "failed"
    assert job.error is not None
    assert "outside this version's limits" in job.error
    assert "processes" in job.error
    assert not (jobs.folder(job_id) / "run").exists()


def database_away() -> OperationalError:
    """What SQLAlchemy raises when the database's server has gone (a restart under way)."""
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def test_a_job_whose_database_goes_away_is_left_to_resume_not_failed(
    jobs: JobStore, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5))

    def away(*_: object, **__: object) -> None:
        raise database_away()

    # The run trains, then the database is gone when its model is to be registered, and when the lease
    # would remove its heartbeat.
    monkeypatch.setattr("core.model_store.ModelStore.add", away)
    monkeypatch.setattr("core.jobs.HeartbeatRow.remove", lambda *_, **__: None)
    with pytest.raises(DatabaseAwayError) as raised:
        run_training_job(job_id, settings)
    monkeypatch.undo()
    job = jobs.get(job_id)
    assert (job.state, job.error) == ("running", None)  # not failed for the database's absence
    assert not jobs.locked(job_id)
    beat = jobs.heartbeat(job_id)
    assert beat is not None
    assert (beat.holder, beat.fresh) == (raised.value.holder, True)  # left behind
    # Another worker does not take a job whose heartbeat is fresh; the task's retry, as that holder, does.
    assert run_training_job(job_id, settings).state == "running"
    again = run_training_job(job_id, settings, holder=raised.value.holder)
    assert again.state == "succeeded", again.error
    assert again.result["model"] == {"name": "tiny", "version": "v1"}
    assert jobs.heartbeat(job_id) is None


def test_a_database_error_that_is_not_an_outage_fails_the_job(
    jobs: JobStore, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = training_job(jobs, make_image_folder(tmp_path / "photos", per_class=5))

    def refused(*_: object, **__: object) -> None:
        raise IntegrityError("INSERT", {}, Exception("duplicate key value"))

    monkeypatch.setattr("core.model_store.ModelStore.add", refused)
    job = run_training_job(job_id, settings)
    assert job.state == "failed"
    assert job.error is not None
    assert "IntegrityError" in job.error
    assert not jobs.locked(job_id)


@pytest.mark.parametrize(
    ("raised", "kwargs"),
    [(DatabaseAwayError("0" * 32, "a-holder"), {"holder": "a-holder"}), (database_away(), None)],
)
def test_the_task_puts_a_job_that_met_the_database_away_back_for_5_s(
    raised: Exception, kwargs: dict[str, str] | None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*_: object, **__: object) -> None:
        raise raised

    monkeypatch.setattr(worker.tasks.training, "get_settings", lambda: settings)
    monkeypatch.setattr(worker.tasks.training, "run_training_job", run)
    retries: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retries.append(options)
        return Retry("put back")

    monkeypatch.setattr(worker.tasks.training.train_model, "retry", retry)
    with pytest.raises(Retry):
        worker.tasks.training.train_model("0" * 32)
    assert [(r["countdown"], r.get("kwargs")) for r in retries] == [(DATABASE_RETRY_SECONDS, kwargs)]


def test_progress_goes_on_while_the_database_is_away(jobs: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job = jobs.create(training_params())
    lease = jobs.lease(job.id, 30)
    assert lease.acquire()
    progress = JobProgress(jobs, job, lease, interval=0.0)

    def away(*_: object, **__: object) -> None:
        raise database_away()

    monkeypatch.setattr(jobs, "save", away)
    monkeypatch.setattr(jobs, "cancel_requested", away)
    progress(Progress(phase="epoch", epoch=1, epochs=3, step=0, steps=0, metrics={"train_loss": 1.0}))
    progress(Progress(phase="prepare", epoch=1, epochs=3, step=0, steps=0))
    monkeypatch.undo()
    progress(Progress(phase="epoch", epoch=2, epochs=3, step=0, steps=0, metrics={"train_loss": 0.5}))
    assert [entry["train_loss"] for entry in jobs.get(job.id).history] == [1.0, 0.5]  # caught up
    lease.release()
