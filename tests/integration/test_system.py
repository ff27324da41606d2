"""The whole system over HTTP: real uvicorn, real Celery worker, real Redis, real TrashNet photos."""

import base64
import io
import json
import signal
import socket
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
from PIL import Image

from tests.app.conftest import API_KEY
from tests.integration.conftest import System, zip_folder

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": API_KEY}
CLASSES = {"cardboard", "glass", "metal", "paper", "plastic", "trash"}


def wait_for_job(api: httpx2.Client, url: str, states: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(url).json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"{url} never reached {states}; last: {job}")


def photo(trashnet_photos: Path, label: str = "glass") -> tuple[str, bytes, str]:
    path = sorted((trashnet_photos / label).glob("*.jpg"))[0]
    return (path.name, path.read_bytes(), "image/jpeg")


def test_ready(api: httpx2.Client) -> None:
    body = api.get("/ready").json()
    assert body["ready"] is True
    assert body["redis"] is True


def test_classify_real_photos(api: httpx2.Client, trashnet_photos: Path) -> None:
    files = [("files", photo(trashnet_photos, label)) for label in sorted(CLASSES)]
    response = api.post("/classify", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 6
    for result in results:
        assert result["label"] in CLASSES
        assert sum(p["probability"] for p in result["predictions"]) == pytest.approx(1.0, abs=1e-4)


def test_explain_a_real_photo(api: httpx2.Client, trashnet_photos: Path) -> None:
    response = api.post(
        "/explain", files={"file": photo(trashnet_photos)}, data={"method": "gradcampp", "target": "glass"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"]["label"] == "glass"
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"])))
    assert overlay.size == Image.open(io.BytesIO(photo(trashnet_photos)[1])).size


@pytest.mark.parametrize(
    ("files", "form", "status"),
    [
        ({"file": ("big.jpg", b"\xff\xd8" + b"0" * (3 * 1024 * 1024), "image/jpeg")}, {}, 413),
        ({"file": ("notes.txt", b"not a photo", "text/plain")}, {}, 415),
        ({"file": ("cut.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg")}, {}, 422),
        ({"file": ("ok.jpg", b"", "image/jpeg")}, {"method": "nope"}, 422),
    ],
)
def test_bad_input_over_http(
    api: httpx2.Client, files: dict[str, tuple[str, bytes, str]], form: dict[str, str], status: int
) -> None:
    response = api.post("/explain", files=files, data=form)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)


def test_connections_that_never_finish_a_header_are_closed(system: System, api: httpx2.Client) -> None:
    """Silent or half-sent headers hold a descriptor each until the header deadline, then are closed,
    while others are answered meanwhile."""
    deadline = float(system.env["TRASHCAM_HEADER_TIMEOUT_SECONDS"])
    address = ("127.0.0.1", int(system.api_url.rsplit(":", 1)[1]))
    silent = socket.create_connection(address)
    half = socket.create_connection(address)
    half.sendall(b"POST /classify HTTP/1.1\r\nHost: trashcam\r\nContent-Ty")
    # After a whole request, the next one's header has the same deadline (the keep-alive wait is longer).
    answered = socket.create_connection(address)
    answered.sendall(b"GET /health HTTP/1.1\r\nHost: trashcam\r\n\r\n")
    answered.settimeout(5)
    assert answered.recv(12) == b"HTTP/1.1 200"
    answered.sendall(b"GET /health HTTP/1.1\r\nHost: tr")
    started = time.monotonic()
    assert api.get("/health").status_code == 200
    for sock in (silent, half, answered):
        sock.settimeout(deadline + 10)  # a timeout here (OSError) fails the test: never closed
        with sock:
            while sock.recv(65536):  # what is left of the first answer, then the close
                pass
    assert time.monotonic() - started < deadline + 5


def test_a_training_job_becomes_the_served_model(api: httpx2.Client, trashnet_photos: Path) -> None:
    form = {
        "model": "simple_cnn",
        "model_kwargs": '{"width": 4}',
        "epochs": "2",
        "batch_size": "8",
        "input_size": "32",
        "name": "tiny-trashnet",
        "make_default": "true",
    }
    created = api.post(
        "/train", files={"file": ("photos.zip", zip_folder(trashnet_photos))}, data=form, headers=KEY
    )
    assert created.status_code == 202, created.text
    job = wait_for_job(api, created.headers["location"], {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", job["error"]
    assert len(job["history"]) == 2
    version = job["result"]["model"]
    assert version["name"] == "tiny-trashnet"
    listed = api.get("/models/tiny-trashnet").json()
    assert [m["version"] for m in listed] == [version["version"]]
    deadline = time.monotonic() + 20
    while api.get("/models").json()["serving"] != version and time.monotonic() < deadline:
        time.sleep(0.3)
    classified = api.post("/classify", files={"file": photo(trashnet_photos)}).json()
    assert classified["results"][0]["model"] == version


def test_a_model_finetuned_from_the_serving_one_serves_calibrated(
    api: httpx2.Client, site_photos: Path
) -> None:
    serving = api.get("/models").json()["serving"]
    form = {"base": "default", "name": "site", "epochs": "3", "batch_size": "16", "make_default": "true"}
    created = api.post(
        "/train", files={"file": ("site.zip", zip_folder(site_photos))}, data=form, headers=KEY
    )
    assert created.status_code == 202, created.text
    job = wait_for_job(api, created.headers["location"], {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", job["error"]
    assert job["params"]["config"]["recipe"] == "finetune"
    assert job["result"]["base"]["ref"] == f"{serving['name']}:{serving['version']}"
    # Every class of the base stays; the ones the site sent no photos of are protected by distilling the
    # base's answers (the shipped checkpoint here has no training photos beside it to replay).
    six = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    assert job["result"]["transfer"] == {
        "kept": six,
        "new": [],
        "without_data": ["cardboard", "plastic", "trash"],
    }
    assert job["result"]["retention"]["method"] == "distill"
    assert job["result"]["calibrated"] is True
    (model,) = api.get("/models/site").json()
    assert model["arch"] == "simple_cnn"
    assert model["classes"] == six
    assert model["calibration"]["temperature"] > 0
    assert model["calibration"]["fitted_on"]["split"] == "val"
    assert "init_from" not in model["recipe"]
    version = job["result"]["model"]
    deadline = time.monotonic() + 20
    while api.get("/models").json()["serving"] != version and time.monotonic() < deadline:
        time.sleep(0.3)
    result = api.post("/classify", files={"file": photo(site_photos, "metal")}).json()["results"][0]
    assert result["model"] == version
    assert result["calibrated"] is True
    assert {p["label"] for p in result["predictions"]} == set(six)
    assert isinstance(result["unsure"], bool)
    # Registered with the index of its training photos, which /similar searches.
    similar = api.post("/similar", files={"file": photo(site_photos, "metal")}).json()
    assert similar["model"] == version
    assert {n["label"] for n in similar["neighbours"]} <= {"glass", "metal", "paper"}
    assert similar["indexed"] > 0


def test_what_reviewers_label_fine_tunes_the_site_model_that_then_serves(
    api: httpx2.Client, site_photos: Path
) -> None:
    photos = sorted(site_photos.rglob("*.jpg"))[::2]  # 45 photos, 15 of each class
    truth = {path.name: path.parent.name for path in photos}
    ids = []
    for start in range(0, len(photos), 16):
        files = [
            ("files", (path.name, path.read_bytes(), "image/jpeg")) for path in photos[start : start + 16]
        ]
        answered = api.post("/classify", files=files, data={"site": "loop", "review": "all"}, headers=KEY)
        assert answered.status_code == 200, answered.text
        ids += [(result["review_id"], result["filename"]) for result in answered.json()["results"]]
    queue = api.get(
        "/review", params={"site": "loop", "order": "least_sure", "limit": "100"}, headers=KEY
    ).json()
    assert queue["total"] == len(photos)
    for item_id, filename in ids:
        labelled = api.post(f"/review/{item_id}", data={"label": truth[filename]}, headers=KEY)
        assert labelled.status_code == 200, labelled.text
    form = {"data_path": "review:loop", "base": "default", "name": "loop", "epochs": "3", "batch_size": "16"}
    created = api.post("/train", data={**form, "make_default": "true"}, headers=KEY)
    assert created.status_code == 202, created.text
    job = wait_for_job(api, created.headers["location"], {"succeeded", "failed", "cancelled"})
    assert job["state"] == "succeeded", job["error"]
    config = job["params"]["config"]
    assert config["split"] == [0.85, 0.15, 0.0]
    lineage = config["review_sets"]["review-loop"]
    assert (lineage["site"], lineage["labels"]) == ("loop", len(photos))
    assert lineage["per_class"] == {"glass": 15, "metal": 15, "paper": 15}
    (model,) = api.get("/models/loop").json()
    assert model["recipe"]["review_sets"]["review-loop"]["by"] == lineage["by"]
    version = job["result"]["model"]
    deadline = time.monotonic() + 20
    while api.get("/models").json()["serving"] != version and time.monotonic() < deadline:
        time.sleep(0.3)
    path = photos[0]
    result = api.post("/classify", files={"file": (path.name, path.read_bytes())}).json()["results"][0]
    assert result["model"] == version
    # The new model came with its training photos' features: it measures the distance to them.
    assert result["distance"] is not None
    assert result["rule"]["max_distance"] is not None


def test_a_heatmap_batch_returns_its_zip(api: httpx2.Client, trashnet_photos: Path) -> None:
    files = [("files", photo(trashnet_photos, label)) for label in ("glass", "metal", "paper")]
    created = api.post("/explain/batch", files=files, data={"method": "layercam"}, headers=KEY)
    assert created.status_code == 202, created.text
    job = wait_for_job(api, created.headers["location"], {"succeeded", "failed"})
    assert job["state"] == "succeeded", job["error"]
    download = api.get(f"{created.headers['location']}/result")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert manifest["method"] == "layercam"
        assert len(manifest["images"]) == 3
        sizes = {name: Image.open(io.BytesIO(data)).size for name, data, _ in (f for _, f in files)}
        for entry in manifest["images"]:
            original = entry["file"].split("-", 1)[1]
            assert Image.open(io.BytesIO(archive.read(entry["overlay"]))).size == sizes[original]


def start_a_long_training_job(api: httpx2.Client, trashnet_photos: Path) -> httpx2.Response:
    """A tiny model for 500 epochs: a job that runs until it is cancelled."""
    form = {
        "model": "simple_cnn",
        "model_kwargs": '{"width": 4}',
        "epochs": "500",
        "batch_size": "4",
        "input_size": "32",
    }
    return api.post(
        "/train", files={"file": ("photos.zip", zip_folder(trashnet_photos))}, data=form, headers=KEY
    )


def test_cancelling_a_running_training_job(api: httpx2.Client, trashnet_photos: Path) -> None:
    url = start_a_long_training_job(api, trashnet_photos).headers["location"]
    running = wait_for_job(api, url, {"running"})
    assert running["state"] == "running"
    assert api.delete(url, headers=KEY).json()["cancel_requested"] is True
    assert wait_for_job(api, url, {"cancelled", "failed", "succeeded"}, timeout=60)["state"] == "cancelled"


def test_a_killed_worker_loses_no_training_job(
    system: System, api: httpx2.Client, trashnet_photos: Path
) -> None:
    form = {
        "model": "simple_cnn",
        "model_kwargs": '{"width": 4}',
        "epochs": "6",
        "batch_size": "4",
        "input_size": "32",
        "name": "survivor",
    }
    created = api.post(
        "/train", files={"file": ("photos.zip", zip_folder(trashnet_photos))}, data=form, headers=KEY
    )
    url = created.headers["location"]
    deadline = time.monotonic() + 120
    while api.get(url).json()["epoch"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    system.kill_workers()  # SIGKILL mid-run: no clean shutdown, no acknowledgement
    interrupted = api.get(url).json()
    assert interrupted["state"] == "running"
    system.start_workers()
    job = wait_for_job(api, url, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job["state"] == "succeeded", (job["error"], system.log("training-worker"))
    assert job["attempts"] >= 2
    assert [record["epoch"] for record in job["history"]][-1] == 6


def large_photos_zip(trashnet_photos: Path, count: int) -> bytes:
    """``count`` TrashNet photos enlarged to 1024 px: each overlay is rendered at the photo's size, so a
    batch of them takes the heatmap worker long enough to be killed in the middle."""
    sources = sorted(trashnet_photos.rglob("*.jpg"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            photo_bytes = io.BytesIO()
            Image.open(sources[index % len(sources)]).resize((1024, 1024)).save(photo_bytes, "JPEG")
            archive.writestr(f"photo-{index:03d}.jpg", photo_bytes.getvalue())
    return buffer.getvalue()


def test_a_killed_heatmap_worker_loses_no_batch(
    system: System, api: httpx2.Client, trashnet_photos: Path
) -> None:
    count = 160
    upload = ("photos.zip", large_photos_zip(trashnet_photos, count))
    created = api.post("/explain/batch", files={"files": upload}, headers=KEY)
    assert created.status_code == 202, created.text
    url = created.headers["location"]
    deadline = time.monotonic() + 120
    while api.get(url).json()["images_done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    system.kill("heatmap-worker")  # SIGKILL mid-batch
    interrupted = api.get(url).json()
    assert interrupted["state"] == "running"
    assert 0 < interrupted["images_done"] < count
    system.kill("training-worker", signal.SIGTERM)
    system.start_workers()
    job = wait_for_job(api, url, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job["state"] == "succeeded", (job["error"], system.log("heatmap-worker"))
    assert job["attempts"] >= 2
    assert (job["images_done"], job["images"], job["result"]["images"]) == (count, count, count)
    with zipfile.ZipFile(io.BytesIO(api.get(f"{url}/result").content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert len(manifest["images"]) == count
        assert all("error" not in entry for entry in manifest["images"])


def test_a_redis_restart_never_runs_one_job_twice(
    system: System, api: httpx2.Client, trashnet_photos: Path
) -> None:
    """Two training workers, a job running on one, and Redis restarted under it: its lock is gone, but
    its worker still runs it and says so in the job's heartbeat file, so the API does not resubmit it and
    the idle worker never starts a second run."""
    system.start_another_training_worker("training-worker-2")
    try:
        created = start_a_long_training_job(api, trashnet_photos)
        url, job_id = created.headers["location"], created.json()["id"]
        deadline = time.monotonic() + 120
        while api.get(url).json()["epoch"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        system.kill("redis")
        system.start_redis()
        # Three lock lifetimes (TRASHCAM_JOB_LOCK_SECONDS=5) of recovery rounds (every second).
        watch_until = time.monotonic() + 15
        while time.monotonic() < watch_until:
            job = api.get(url).json()
            assert (job["state"], job["attempts"]) == ("running", 1), job
            time.sleep(0.5)
        api.delete(url, headers=KEY)
        job = wait_for_job(api, url, {"cancelled", "failed", "succeeded"}, timeout=60)
        assert (job["state"], job["attempts"]) == ("cancelled", 1), job
        logs = system.log("training-worker", whole=True) + system.log("training-worker-2", whole=True)
        # One queue message (task id <job>-<attempts when queued>), received by one worker, once.
        assert logs.count(f"trashcam.train[{job_id}-") == logs.count(f"trashcam.train[{job_id}-0]")
        assert logs.count(f"trashcam.train[{job_id}-0] received") == 1
    finally:
        system.kill("training-worker-2", signal.SIGTERM)


def test_a_redis_restart_loses_no_job(system: System, api: httpx2.Client, trashnet_photos: Path) -> None:
    system.kill_workers()
    created = api.post("/explain/batch", files=[("files", photo(trashnet_photos))], headers=KEY)
    url = created.headers["location"]
    system.kill("redis")  # Redis keeps nothing on disk: the queued message and the record's copy are gone
    system.start_redis()
    assert api.get(url).json()["state"] == "queued"  # read back from the job's file
    system.start_workers()
    job = wait_for_job(api, url, {"succeeded", "failed"}, timeout=120)
    assert job["state"] == "succeeded", (job["error"], system.log("heatmap-worker"), system.log("api"))


def test_a_restarted_api_still_reports_every_job(system: System, api: httpx2.Client) -> None:
    before = api.get("/train").json()
    assert before
    system.kill("api")
    system.start_api()
    after = api.get("/train").json()
    assert [(j["id"], j["state"]) for j in after] == [(j["id"], j["state"]) for j in before]


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def test_huge_photos_leave_no_lasting_memory(system: System, api: httpx2.Client) -> None:
    """16 small PNGs of 6000 x 6000 pixels in one /classify are refused before any is decoded; two
    (under the request's pixel budget) are decoded one at a time and shrunk at once, and the memory
    goes back."""
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (120, 90, 60)).save(buffer, format="PNG")
    big = ("big.png", buffer.getvalue(), "image/png")
    assert len(big[1]) < 200_000
    pid = system.processes["api"].pid
    small = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(small, format="PNG")
    # The model's first batches allocate their buffers.
    api.post("/classify", files=[("files", ("small.png", small.getvalue(), "image/png"))] * 2)
    before = rss_mb(pid)
    response = api.post("/classify", files=[("files", big)] * 16)
    assert response.status_code == 413
    assert "576000000 pixels in all" in response.json()["detail"]
    for _ in range(3):
        response = api.post("/classify", files=[("files", big)] * 2)
        assert response.status_code == 200
        assert len(response.json()["results"]) == 2
    # One decoded photo is 108 MB; what stays must be far less than the 16 of them (1.7 GB).
    assert rss_mb(pid) - before < 150
