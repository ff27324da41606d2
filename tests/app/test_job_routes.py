import errno
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from core.job_folder import JobFolder
from core.jobs import JOB_FORMAT, JobStore, TrainingParams
from core.settings import Settings
from tests.app.conftest import API_KEY, FakeSubmitter, png_bytes
from tests.core.conftest import store_record, stored_record
from tests.training.helpers import make_image_folder
from training.archive import ArchiveError
from worker.runner import unpack_inputs

KEY = {"X-API-Key": API_KEY}


def job_folders(settings: Settings) -> list[str]:
    """The jobs kept on disk (the index beside them is not one)."""
    if not settings.jobs_dir.is_dir():
        return []
    return [path.name for path in settings.jobs_dir.iterdir() if path.is_dir()]


def zip_of_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def zip_with(names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, png_bytes())
    return buffer.getvalue()


@pytest.fixture
def dataset_zip(tmp_path: Path) -> bytes:
    return zip_of_folder(make_image_folder(tmp_path / "trash-photos", per_class=3))


def test_training_needs_an_api_key(client: TestClient, dataset_zip: bytes) -> None:
    response = client.post("/train", files={"file": ("data.zip", dataset_zip)})
    assert response.status_code == 401


def test_training_job_from_an_uploaded_archive(
    client: TestClient, submitted: FakeSubmitter, dataset_zip: bytes, settings: Settings
) -> None:
    form = {
        "model": "simple_cnn",
        "epochs": "1",
        "batch_size": "4",
        "input_size": "32",
        "name": "tiny-waste",
        "processes": "2",
    }
    response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, data=form, headers=KEY)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["processes"] == 2
    assert response.headers["location"] == f"/train/{job['id']}"
    assert (job["kind"], job["state"], job["progress"]) == ("training", "queued", 0.0)
    # The planned epochs show from the start; none has begun.
    assert (job["epoch"], job["epochs"]) == (0, 1)
    assert job["params"]["name"] == "tiny-waste"
    config = job["params"]["config"]
    assert (config["model"], config["epochs"], config["batch_size"], config["input_size"]) == (
        "simple_cnn",
        1,
        4,
        32,
    )
    assert config["recipe"] == "paper"
    assert not {"data", "out", "init_from"} & set(config)  # server paths stay private
    # The config the worker will run, built and checked once, here.
    (queued,) = submitted.jobs
    assert isinstance(queued.params, TrainingParams)
    assert queued.params.config.out == str(settings.jobs_dir / job["id"] / "run")
    assert queued.params.processes == 2
    assert [j.id for j in submitted.jobs] == [job["id"]]
    assert (settings.jobs_dir / job["id"] / "upload.zip").read_bytes() == dataset_zip
    assert client.get(f"/train/{job['id']}").json()["id"] == job["id"]
    assert [j["id"] for j in client.get("/train").json()] == [job["id"]]


def test_a_training_job_takes_a_split_without_a_test_fraction(
    client: TestClient, submitted: FakeSubmitter, dataset_zip: bytes
) -> None:
    form = {"model": "simple_cnn", "epochs": "1", "input_size": "32", "split": ["0.8", "0.2", "0"]}
    response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, data=form, headers=KEY)
    assert response.status_code == 202, response.text
    assert response.json()["params"]["config"]["split"] == [0.8, 0.2, 0.0]
    (queued,) = submitted.jobs
    assert isinstance(queued.params, TrainingParams)
    assert queued.params.config.split == (0.8, 0.2, 0.0)


def test_training_job_from_the_data_root(
    client: TestClient, settings: Settings, submitted: FakeSubmitter
) -> None:
    make_image_folder(settings.resolved_data_root / "photos", per_class=3)
    response = client.post("/train", data={"data_path": "photos", "model": "simple_cnn"}, headers=KEY)
    assert response.status_code == 202, response.text
    params = submitted.jobs[0].params
    assert isinstance(params, TrainingParams)
    assert params.config.data == str((settings.resolved_data_root / "photos").resolve())


def test_training_job_on_an_upload_and_data_root_folders_at_once(
    client: TestClient, settings: Settings, submitted: FakeSubmitter, dataset_zip: bytes
) -> None:
    root = settings.resolved_data_root
    make_image_folder(root / "photos", per_class=3)
    make_image_folder(root / "site-a", per_class=3)
    form = {"data_path": ["photos", "site=site-a"], "class_balance": "0.5", "source_balance": "1"}
    response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, data=form, headers=KEY)
    assert response.status_code == 202, response.text
    params = submitted.jobs[0].params
    assert isinstance(params, TrainingParams)
    assert params.config.data == (
        f"upload={settings.jobs_dir / response.json()['id'] / 'upload.zip'}",
        f"photos={(root / 'photos').resolve()}",
        f"site={(root / 'site-a').resolve()}",
    )
    assert (params.config.class_balance, params.config.source_balance) == (0.5, 1.0)
    assert response.json()["params"]["source"] == "upload:data.zip, data_root:photos, data_root:site=site-a"


def test_cancelling_a_queued_job(client: TestClient, dataset_zip: bytes) -> None:
    job = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY).json()
    assert client.delete(f"/train/{job['id']}").status_code == 401
    cancelled = client.delete(f"/train/{job['id']}", headers=KEY).json()
    assert (cancelled["state"], cancelled["cancel_requested"]) == ("cancelled", True)
    assert client.get(f"/train/{job['id']}").json()["state"] == "cancelled"


def test_unknown_jobs_are_404(client: TestClient) -> None:
    assert client.get("/train/" + "0" * 32).status_code == 404
    assert client.get("/train/not-an-id").status_code == 404
    assert client.delete("/train/" + "0" * 32, headers=KEY).status_code == 404
    assert client.get("/explain/batch/" + "0" * 32).status_code == 404


@pytest.mark.parametrize(
    ("form", "status", "message"),
    [
        ({"model": "vgg16"}, 422, "unknown model 'vgg16'; valid models: resnet50"),
        ({"recipe": "magic"}, 422, "unknown recipe 'magic'; valid recipes: paper, improved, strong"),
        ({"name": "Bad Name!"}, 422, "invalid model name"),
        ({"name": "default.json"}, 422, "reserved"),
        ({"name": "default"}, 422, "reserved"),
        ({"model_kwargs": "[1, 2]"}, 422, "model_kwargs must be a JSON object"),
        ({"model_kwargs": '{"depth": 3}'}, 422, "invalid options for se_resnet50: depth"),
        ({"model": "simple_cnn", "model_kwargs": '{"width": -1}'}, 422, "width: Input should be greater"),
        ({"model": "simple_cnn", "model_kwargs": '{"width": 20000}'}, 422, "width: Input should be less"),
        ({"data_path": "photos"}, 422, "data_path 'photos' does not exist under the data root"),
        ({"data_path": "upload=photos"}, 422, "data set names must differ"),
        ({"split": ["0.8", "0.2"]}, 422, "split"),
        ({"split": ["0.8", "0.0", "0.2"]}, 422, "positive train and val fractions"),
        ({"split": ["0.8", "0.3", "0.1"]}, 422, "split fractions must sum to 1"),
        ({"processes": "9"}, 422, "processes: at most 8 on this service"),
        ({"processes": "0"}, 422, "processes: Input should be greater than or equal to 1"),
        ({"processes": "3", "batch_size": "8"}, 422, "batch_size 8 does not split over 3 processes"),
    ],
)
def test_bad_training_requests(
    client: TestClient,
    dataset_zip: bytes,
    settings: Settings,
    form: dict[str, str],
    status: int,
    message: str,
) -> None:
    response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, data=form, headers=KEY)
    assert response.status_code == status, response.text
    assert message in str(response.json()["detail"])
    assert job_folders(settings) == []


def test_a_missing_data_path_says_where_the_data_root_is_and_what_it_holds(
    client: TestClient, settings: Settings
) -> None:
    (settings.resolved_data_root / "site-a").mkdir(parents=True)
    response = client.post("/train", data={"data_path": "site-b"}, headers=KEY)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "TRASHCAM_DATA_ROOT" in detail
    assert "it holds: site-a" in detail
    assert str(settings.resolved_data_root) not in detail  # the server's folders stay private


def test_epochs_out_of_range_is_422(client: TestClient, dataset_zip: bytes) -> None:
    response = client.post(
        "/train", files={"file": ("d.zip", dataset_zip)}, data={"epochs": "0", "lr": "x"}, headers=KEY
    )
    assert response.status_code == 422
    # FastAPI's own validation errors follow the one error schema: one string naming each field.
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "epochs: Input should be greater than or equal to 1" in detail
    assert "lr: Input should be a valid number" in detail


@pytest.mark.parametrize(
    "data_path",
    # The last: short components, 5,000 bytes in all (the file system's ENAMETOOLONG: a 500 before).
    ["../outside", "/etc", "photos/../../outside", "missing", "photos\x00.zip", "a" * 256, "photos/a" * 625],
)
def test_data_paths_are_confined_to_the_data_root(
    client: TestClient, settings: Settings, data_path: str
) -> None:
    (settings.resolved_data_root / "photos").mkdir(parents=True)
    response = client.post("/train", data={"data_path": data_path}, headers=KEY)
    assert response.status_code == 422
    assert "data_path" in response.json()["detail"]


def test_a_symlink_out_of_the_data_root_is_refused(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    outside = make_image_folder(tmp_path / "elsewhere", per_class=2)
    settings.resolved_data_root.mkdir(parents=True)
    os.symlink(outside, settings.resolved_data_root / "link")
    response = client.post("/train", data={"data_path": "link"}, headers=KEY)
    assert response.status_code == 422
    assert "leads outside the data root" in response.json()["detail"]


def test_links_inside_a_data_set_that_leave_the_data_root_are_refused(
    client: TestClient, settings: Settings, submitted: FakeSubmitter, tmp_path: Path
) -> None:
    secret = make_image_folder(tmp_path / "elsewhere", per_class=1)
    photos = make_image_folder(settings.resolved_data_root / "site-a", per_class=3)
    os.symlink(secret / "glass" / "glass0.png", photos / "glass" / "stolen.png")
    os.symlink(secret / "metal", photos / "metal" / "more")
    response = client.post("/train", data={"data_path": "site-a"}, headers=KEY)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "holds links that lead outside the data root: glass/stolen.png, metal/more" in detail
    assert submitted.jobs == []
    # A link that stays inside the data root is a data set's own business.
    (photos / "glass" / "stolen.png").unlink()
    (photos / "metal" / "more").unlink()
    os.symlink(photos / "paper" / "paper0.png", photos / "glass" / "alias.png")
    assert client.post("/train", data={"data_path": "site-a"}, headers=KEY).status_code == 202


@pytest.mark.parametrize("name", ["../escape.png", "/abs/olute.png", "ok/../../escape.png"])
def test_zip_slip_archives_are_refused(client: TestClient, name: str) -> None:
    response = client.post(
        "/train", files={"file": ("evil.zip", zip_with(["glass/a.png", name]))}, headers=KEY
    )
    assert response.status_code == 422
    assert "evil.zip" in response.json()["detail"]


def test_tar_links_out_of_the_archive_are_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("glass/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(link)
    response = client.post("/train", files={"file": ("evil.tar.gz", buffer.getvalue())}, headers=KEY)
    assert response.status_code == 422
    assert "link escapes" in response.json()["detail"]


def test_archive_bombs_are_413(settings: Settings, submitted: FakeSubmitter) -> None:
    settings.max_archive_files = 3
    with TestClient(create_app(settings, submitter=submitted)) as client:
        names = [f"glass/{i}.png" for i in range(4)]
        response = client.post("/train", files={"file": ("many.zip", zip_with(names))}, headers=KEY)
    assert response.status_code == 413
    assert "more than 3 files" in response.json()["detail"]
    assert submitted.jobs == []


def test_archive_expanding_past_the_byte_limit_is_413(settings: Settings, submitted: FakeSubmitter) -> None:
    settings.max_archive_bytes = 10_000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("glass/zeros.png", b"\0" * 1_000_000)  # compresses to about 1 KB
    with TestClient(create_app(settings, submitter=submitted)) as client:
        response = client.post("/train", files={"file": ("bomb.zip", buffer.getvalue())}, headers=KEY)
    assert response.status_code == 413
    assert "expands to more than 10000 bytes" in response.json()["detail"]


def test_oversized_archive_upload_is_413(
    settings: Settings, submitted: FakeSubmitter, dataset_zip: bytes
) -> None:
    settings.max_archive_upload_bytes = 1000
    with TestClient(create_app(settings, submitter=submitted)) as client:
        response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY)
    assert response.status_code == 413


def test_a_training_upload_that_is_not_an_archive_is_415(client: TestClient) -> None:
    response = client.post("/train", files={"file": ("photo.png", png_bytes())}, headers=KEY)
    assert response.status_code == 415


def test_heatmap_batch_from_photos(client: TestClient, submitted: FakeSubmitter, settings: Settings) -> None:
    files = [("files", (f"p{i}.png", png_bytes(), "image/png")) for i in range(3)]
    assert client.post("/explain/batch", files=files).status_code == 401
    response = client.post("/explain/batch", files=files, data={"method": "gradcampp"}, headers=KEY)
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["kind"], job["state"], job["params"]["method"]) == ("heatmaps", "queued", "gradcampp")
    assert len(list((settings.jobs_dir / job["id"] / "inputs").iterdir())) == 3
    assert submitted.jobs[0].id == job["id"]
    result = client.get(f"/explain/batch/{job['id']}/result")
    assert result.status_code == 409
    assert "is queued" in result.json()["detail"]


def test_heatmap_batch_from_an_archive(client: TestClient, settings: Settings) -> None:
    photos = zip_with(["a/1.png", "b/2.png"])
    response = client.post("/explain/batch", files={"files": ("photos.zip", photos)}, headers=KEY)
    assert response.status_code == 202
    # The request vets the archive's member list and keeps it; the worker extracts it.
    folder = settings.jobs_dir / response.json()["id"]
    assert (folder / "upload.zip").read_bytes() == photos
    assert not (folder / "inputs").exists()
    unpack_inputs(JobFolder(folder), settings)
    inputs = folder / "inputs"
    assert sorted(p.relative_to(inputs).as_posix() for p in inputs.rglob("*.png")) == ["a/1.png", "b/2.png"]
    assert not (folder / "upload.zip").exists()
    unpack_inputs(JobFolder(folder), settings)  # a resubmitted job finds its photos where they are


@pytest.mark.parametrize(
    ("files", "form", "status"),
    [
        ([("files", ("notes.txt", b"hi", "text/plain"))], {}, 415),
        ([("files", ("p.png", png_bytes(), "image/png"))], {"method": "nope"}, 422),
        ([("files", ("p.png", png_bytes(), "image/png"))], {"colormap": "nope"}, 422),
        ([("files", ("empty.zip", zip_with([]), "application/zip"))], {}, 422),
        ([("files", ("evil.zip", zip_with(["../x.png"]), "application/zip"))], {}, 422),
    ],
)
def test_bad_heatmap_batches(
    client: TestClient,
    submitted: FakeSubmitter,
    files: list[tuple[str, tuple[str, bytes, str]]],
    form: dict[str, str],
    status: int,
) -> None:
    response = client.post("/explain/batch", files=files, data=form, headers=KEY)
    assert response.status_code == status, response.text
    assert submitted.jobs == []


def test_cancelling_a_finished_job_is_409(client: TestClient, dataset_zip: bytes, settings: Settings) -> None:
    job = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY).json()
    jobs = JobStore.from_settings(settings)
    record = jobs.get(job["id"])
    record.state = "succeeded"
    jobs.save(record)
    response = client.delete(f"/train/{job['id']}", headers=KEY)
    assert response.status_code == 409
    assert "has already succeeded" in response.json()["detail"]


def test_a_finished_job_is_purged_on_request_and_a_running_one_is_not(
    client: TestClient, dataset_zip: bytes, settings: Settings
) -> None:
    job = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY).json()
    upload = settings.jobs_dir / job["id"] / "upload.zip"
    assert upload.is_file()
    refused = client.delete(f"/train/{job['id']}", params={"purge": "true"}, headers=KEY)
    assert refused.status_code == 409
    assert "cancel it first" in refused.json()["detail"]
    jobs = JobStore.from_settings(settings)
    record = jobs.get(job["id"])
    record.state = "succeeded"
    jobs.save(record)
    purged = client.delete(f"/train/{job['id']}", params={"purge": "true"}, headers=KEY)
    assert purged.status_code == 200, purged.text
    assert purged.json()["pruned_at"] is not None
    assert not upload.exists()
    assert client.get(f"/train/{job['id']}").json()["state"] == "succeeded"  # the record stays


def test_a_record_a_newer_version_wrote_is_shown_and_cancelled_but_not_rewritten(
    client: TestClient, dataset_zip: bytes, settings: Settings
) -> None:
    job = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY).json()
    jobs = JobStore.from_settings(settings)
    queued = {**json.loads(stored_record(jobs, job["id"])), "format": JOB_FORMAT + 1}
    store_record(jobs, job["id"], queued)
    cancelled = client.delete(f"/train/{job['id']}", headers=KEY)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cancel_requested"] is True  # the flag, which the newer worker heeds
    assert json.loads(stored_record(jobs, job["id"])) == queued
    newer = {**queued, "state": "succeeded"}
    store_record(jobs, job["id"], newer, state="succeeded")
    shown = client.get(f"/train/{job['id']}")
    assert (shown.status_code, shown.json()["state"]) == (200, "succeeded")
    refused = client.delete(f"/train/{job['id']}", params={"purge": "true"}, headers=KEY)
    assert refused.status_code == 409
    assert "newer than this version's" in refused.json()["detail"]
    assert (settings.jobs_dir / job["id"] / "upload.zip").is_file()  # nothing was removed
    assert json.loads(stored_record(jobs, job["id"])) == newer
    # One it cannot even parse (a state it does not know) is the newer version's, not missing.
    store_record(jobs, job["id"], {**newer, "state": "paused"}, state="paused")
    unreadable = client.get(f"/train/{job['id']}")
    assert unreadable.status_code == 409
    assert "newer than this version's" in unreadable.json()["detail"]


def test_an_unreachable_queue_is_503_and_keeps_nothing(settings: Settings, dataset_zip: bytes) -> None:
    def broken(job: object) -> None:
        raise redis.ConnectionError("connection refused")

    with TestClient(create_app(settings, submitter=broken)) as client:
        response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY)
    assert response.status_code == 503
    assert "job queue is unreachable" in response.json()["detail"]
    assert int(response.headers["retry-after"]) > 0
    assert job_folders(settings) == []
    assert JobStore.from_settings(settings).counts() == {}


def test_a_body_declared_over_the_limit_is_413_before_it_is_read(settings: Settings) -> None:
    settings.max_archive_upload_bytes = 1000
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/train",
            content=b"x" * 5_000_000,
            headers={**KEY, "Content-Type": "multipart/form-data; boundary=x"},
        )
    assert response.status_code == 413
    assert "over the limit" in response.json()["detail"]


def test_finetuning_the_serving_model_takes_its_architecture_and_lineage(
    client: TestClient, submitted: FakeSubmitter, dataset_zip: bytes, settings: Settings
) -> None:
    form = {"base": "default", "epochs": "2", "batch_size": "4"}
    response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, data=form, headers=KEY)
    assert response.status_code == 202, response.text
    job = response.json()
    options = job["params"]["config"]
    assert options["recipe"] == "finetune"
    assert (options["model"], options["model_kwargs"], options["input_size"]) == (
        "simple_cnn",
        {"width": 4},
        32,
    )
    assert options["base"].startswith("tiny:")
    assert len(options["init_sha256"]) == 64
    assert "init_from" not in options  # the server's path stays private
    (queued,) = submitted.jobs
    assert isinstance(queued.params, TrainingParams)
    assert queued.params.config.init_from == str(settings.model_path)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"base": "nothing-here"}, "no model named 'nothing-here'"),
        ({"base": "default", "base_version": "v1"}, "give no base_version"),
        ({"base": "default", "model": "resnet50"}, "keeps its architecture"),
        ({"base": "default", "input_size": "64"}, "px photos"),
        ({"base": "default", "model_kwargs": '{"width": 8}'}, "architecture options"),
        ({"recipe": "finetune", "model": "simple_cnn"}, "starts from a trained model"),
    ],
)
def test_bad_bases_are_422_with_why(
    client: TestClient, dataset_zip: bytes, form: dict[str, str], message: str
) -> None:
    response = client.post("/train", files={"file": ("data.zip", dataset_zip)}, data=form, headers=KEY)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_a_pruned_batch_result_is_410(client: TestClient, settings: Settings) -> None:
    from core.retention import prune_finished_jobs

    files = [("files", ("a.png", png_bytes(), "image/png"))]
    job = client.post("/explain/batch", files=files, headers=KEY).json()
    jobs = JobStore.from_settings(settings)
    record = jobs.get(job["id"])
    record.state, record.finished_at = "succeeded", 0.0
    jobs.save(record)
    (jobs.folder(job["id"]) / "result.zip").write_bytes(b"PK")
    assert client.get(f"/explain/batch/{job['id']}/result").status_code == 200
    assert job["id"] in prune_finished_jobs(jobs, retention_seconds=1.0)
    response = client.get(f"/explain/batch/{job['id']}/result")
    assert response.status_code == 410
    assert "removed after the retention time" in response.json()["detail"]
    assert client.get(f"/explain/batch/{job['id']}").json()["pruned_at"] is not None


def test_finetuning_the_serving_model_when_none_serves_is_503(settings: Settings, dataset_zip: bytes) -> None:
    unserved = settings.model_copy(update={"model_path": None})
    with TestClient(create_app(unserved, submitter=FakeSubmitter())) as client:
        response = client.post(
            "/train", files={"file": ("data.zip", dataset_zip)}, data={"base": "default"}, headers=KEY
        )
    assert response.status_code == 503
    assert "no model is loaded" in response.json()["detail"]


def test_a_diverged_job_is_shown_with_null_metrics(
    client: TestClient, dataset_zip: bytes, settings: Settings
) -> None:
    """JSON has no NaN: a diverged run's loss is answered as null, and the job stays listed."""
    job = client.post("/train", files={"file": ("data.zip", dataset_zip)}, headers=KEY).json()
    jobs = JobStore.from_settings(settings)
    record = jobs.get(job["id"])
    record.state, record.metrics = "running", {"train_loss": float("nan"), "train_accuracy": 0.25}
    jobs.save(record)
    shown = client.get(f"/train/{job['id']}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["metrics"] == {"train_loss": None, "train_accuracy": 0.25}
    assert [j["id"] for j in client.get("/train").json()] == [job["id"]]


def test_a_batch_of_photos_with_long_emoji_names_is_stored(
    client: TestClient, submitted: FakeSubmitter, settings: Settings
) -> None:
    name = "\N{WASTEBASKET}" * 100 + ".png"  # 400 bytes of UTF-8: over a file system's 255
    files = [("files", (name, png_bytes(), "image/png")), ("files", (name, png_bytes(), "image/png"))]
    response = client.post("/explain/batch", files=files, headers=KEY)
    assert response.status_code == 202, response.text
    inputs = settings.jobs_dir / response.json()["id"] / "inputs"
    stored = sorted(path.name for path in inputs.iterdir())
    assert len(stored) == 2
    assert all(len(stored_name.encode()) <= 80 for stored_name in stored)
    assert stored[0] == "00000-" + "\N{WASTEBASKET}" * 16 + ".png"


def test_uploads_on_a_full_disk_are_507_and_keep_nothing(
    client: TestClient, settings: Settings, dataset_zip: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = open

    def full_disk_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        handle = real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]
        if "w" in mode and str(settings.jobs_dir) in str(path):
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return handle

    monkeypatch.setattr("builtins.open", full_disk_open)
    photos = client.post("/explain/batch", files={"files": ("a.png", png_bytes(), "image/png")}, headers=KEY)
    archive = client.post(
        "/train", files={"file": ("photos.zip", dataset_zip, "application/zip")}, headers=KEY
    )
    monkeypatch.undo()
    for response in (photos, archive):
        assert response.status_code == 507, response.text
        assert "the server's disk is full" in response.json()["detail"]
    assert job_folders(settings) == []


def test_a_batch_archive_that_fills_the_disk_as_the_worker_extracts_it_keeps_its_upload(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = zip_with(["a.png"])
    response = client.post(
        "/explain/batch", files={"files": ("photos.zip", archive, "application/zip")}, headers=KEY
    )
    assert response.status_code == 202
    folder = settings.jobs_dir / response.json()["id"]

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("training.archive._copy_capped", full_disk)
    with pytest.raises(ArchiveError, match="No space left on device"):
        unpack_inputs(JobFolder(folder), settings)
    monkeypatch.undo()
    # Nothing half-extracted looks complete, and the upload stays for the job's next attempt.
    assert not (folder / "inputs").exists()
    assert (folder / "upload.zip").read_bytes() == archive
    unpack_inputs(JobFolder(folder), settings)
    assert (folder / "inputs" / "a.png").is_file()


@pytest.mark.parametrize("route", ["/train", "/explain/batch"])
def test_an_archive_without_photos_is_refused_in_the_request(client: TestClient, route: str) -> None:
    field = "file" if route == "/train" else "files"
    for archive, files in ((zip_with([]), 0), (zip_with(["notes.txt", "a/readme.md"]), 2)):
        response = client.post(route, files={field: ("photos.zip", archive, "application/zip")}, headers=KEY)
        assert response.status_code == 422, response.text
        assert response.json()["detail"].startswith(f"photos.zip: no photos in the archive ({files} files")


def test_class_folders_with_hidden_characters_are_refused_in_the_request(client: TestClient) -> None:
    archive = zip_with(["gla\u202ess/a.png", "paper/b.png"])
    response = client.post("/train", files={"file": ("photos.zip", archive, "application/zip")}, headers=KEY)
    assert response.status_code == 422
    assert "holds control or formatting characters (U+202E)" in response.json()["detail"]
