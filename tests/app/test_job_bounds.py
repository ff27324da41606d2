"""Every job has a bound: the queues', each key's (jobs at once, bytes on disk), and an upload's (checked
from its member list in the request, extracted only in a worker); listing and counting jobs read an
index, not every record."""

import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from core.jobs import JobStore
from core.retention import prune_job
from core.settings import ApiKey, Settings
from tests.app.conftest import API_KEY, FakeSubmitter, png_bytes
from tests.training.helpers import make_image_folder

KEY = {"X-API-Key": API_KEY}
OTHER_KEY = "other-key-0123456789"


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def photos_zip(count: int = 2) -> bytes:
    return zip_of({f"photos/{index}.png": png_bytes() for index in range(count)})


def batch(client: TestClient, key: str = API_KEY) -> int:
    response = client.post(
        "/explain/batch", files={"files": ("p.png", png_bytes(), "image/png")}, headers={"X-API-Key": key}
    )
    return response.status_code


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    return JobStore.from_settings(settings)


def bounded(settings: Settings, **limits: object) -> Settings:
    keys = [
        ApiKey(name="site-a", key=SecretStr(API_KEY), role="train"),
        ApiKey(name="site-b", key=SecretStr(OTHER_KEY), role="train"),
    ]
    return settings.model_copy(update={"api_keys": keys, **limits})


@pytest.fixture
def bounded_client(settings: Settings, submitted: FakeSubmitter) -> Iterator[TestClient]:
    with TestClient(create_app(bounded(settings, max_active_jobs_per_key=2), submitter=submitted)) as client:
        yield client


def test_a_key_with_too_many_jobs_at_once_is_429_and_others_go_on(
    bounded_client: TestClient, submitted: FakeSubmitter, jobs: JobStore
) -> None:
    assert [batch(bounded_client) for _ in range(2)] == [202, 202]
    refused = bounded_client.post(
        "/explain/batch", files={"files": ("p.png", png_bytes(), "image/png")}, headers=KEY
    )
    assert refused.status_code == 429
    assert "'site-a' has 2 jobs queued or running, the limit is 2" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) > 0
    assert batch(bounded_client, OTHER_KEY) == 202  # another key's quota is its own
    assert len(submitted.jobs) == 3
    # A finished job frees its place.
    done = jobs.get(submitted.jobs[0].id)
    done.state = "succeeded"
    jobs.save(done)
    assert batch(bounded_client) == 202


def test_the_quota_is_checked_before_the_upload_is_read(
    bounded_client: TestClient, submitted: FakeSubmitter
) -> None:
    assert [batch(bounded_client) for _ in range(2)] == [202, 202]

    def body() -> Iterator[bytes]:
        yield b"--x\r\n"
        raise AssertionError("the gate read the upload of a key over its quota")

    refused = bounded_client.post(
        "/explain/batch",
        content=body(),
        headers={**KEY, "Content-Type": "multipart/form-data; boundary=x"},
    )
    assert refused.status_code == 429
    assert refused.headers["connection"] == "close"  # the rest of the upload is never read


def test_full_queues_are_503_for_every_key(settings: Settings, submitted: FakeSubmitter) -> None:
    with TestClient(create_app(bounded(settings, max_queued_jobs=2), submitter=submitted)) as client:
        assert [batch(client), batch(client, OTHER_KEY)] == [202, 202]
        for key in (API_KEY, OTHER_KEY):
            refused = client.post(
                "/explain/batch",
                files={"files": ("p.png", png_bytes(), "image/png")},
                headers={"X-API-Key": key},
            )
            assert refused.status_code == 503
            assert "the job queues are full: 2 jobs wait, the limit is 2" in refused.json()["detail"]
            assert "retry-after" in refused.headers
    assert len(submitted.jobs) == 2


def test_a_key_whose_jobs_hold_too_many_bytes_is_429_until_they_are_purged(
    settings: Settings, submitted: FakeSubmitter, jobs: JobStore
) -> None:
    archive = photos_zip(8)
    assert len(archive) > 20_000
    limit = len(archive) * 2 + 8000  # two uploads fit, with their records of 2-3 kB; a third does not
    with TestClient(
        create_app(bounded(settings, max_job_bytes_per_key=limit), submitter=submitted)
    ) as client:

        def upload() -> int:
            files = {"files": ("photos.zip", archive, "application/zip")}
            return client.post("/explain/batch", files=files, headers=KEY).status_code

        assert [upload(), upload()] == [202, 202]
        refused = client.post(
            "/explain/batch", files={"files": ("photos.zip", archive, "application/zip")}, headers=KEY
        )
        assert refused.status_code == 429
        assert "'site-a''s jobs hold" in refused.json()["detail"]
        assert "(DELETE with purge=true)" in refused.json()["detail"]
        assert len(submitted.jobs) == 2
        assert len([p for p in settings.jobs_dir.iterdir() if p.is_dir()]) == 2  # nothing of the third kept
        # Finished and purged, the first job's upload no longer counts.
        first = jobs.get(submitted.jobs[0].id)
        first.state = "succeeded"
        jobs.save(first)
        prune_job(jobs, jobs.get(first.id))  # as retention does
        assert upload() == 202


def test_a_compression_bomb_is_413_from_its_member_list(client: TestClient, submitted: FakeSubmitter) -> None:
    bomb = zip_of(
        {"photos/a.png": png_bytes(), "photos/zeros.png": bytes(80 << 20)}, compression=zipfile.ZIP_DEFLATED
    )
    assert len(bomb) < 1 << 20
    response = client.post("/explain/batch", files={"files": ("bomb.zip", bomb)}, headers=KEY)
    assert response.status_code == 413, response.text
    assert "times its own size" in response.json()["detail"]
    assert submitted.jobs == []


@pytest.mark.parametrize("route", ["/explain/batch", "/train"])
def test_an_archive_of_only_broken_photos_is_refused_in_the_request(
    client: TestClient, submitted: FakeSubmitter, route: str
) -> None:
    broken = zip_of({f"glass/{index}.jpg": b"not a photo %d" % index for index in range(20)})
    field = "files" if route == "/explain/batch" else "file"
    response = client.post(route, files={field: ("broken.zip", broken)}, headers=KEY)
    assert response.status_code == 422, response.text
    assert "none of the 8 photos tried opens as an image" in response.json()["detail"]
    assert submitted.jobs == []


def test_one_readable_photo_is_enough_for_a_batch(client: TestClient) -> None:
    mixed = zip_of({"a/0.jpg": b"not a photo", "a/1.png": png_bytes()})
    assert (
        client.post("/explain/batch", files={"files": ("mixed.zip", mixed)}, headers=KEY).status_code == 202
    )


def test_uploaded_photos_none_of_which_opens_are_refused(client: TestClient) -> None:
    files = [("files", (f"{index}.jpg", b"garbage", "image/jpeg")) for index in range(3)]
    response = client.post("/explain/batch", files=files, headers=KEY)
    assert response.status_code == 422
    assert "none of the 3 photos tried opens as an image" in response.json()["detail"]


def tagged_data_set(root: Path, sources: list[str]) -> Path:
    make_image_folder(root, per_class=len(sources))
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "source"])
        for index, photo in enumerate(sorted(root.rglob("*.png"))):
            writer.writerow([photo.relative_to(root).as_posix(), sources[index % len(sources)]])
    return root


@pytest.mark.parametrize("as_archive", [False, True])
def test_an_unknown_held_out_source_is_422_in_the_request(
    client: TestClient, settings: Settings, submitted: FakeSubmitter, tmp_path: Path, as_archive: bool
) -> None:
    folder = tagged_data_set(tmp_path / "tagged", ["web", "site"])
    files: dict[str, tuple[str, bytes]] | None = None
    data = {"model": "simple_cnn", "holdout": "sd"}
    if as_archive:
        members = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        files = {"file": ("tagged.zip", zip_of(members))}
    else:
        target = settings.resolved_data_root / "tagged"
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
        data["data_path"] = "tagged"
    response = client.post("/train", data=data, files=files, headers=KEY)
    assert response.status_code == 422, response.text
    assert "holdout: no photos of ['sd']; the data sets' sources: site, web" in response.json()["detail"]
    assert submitted.jobs == []
    data["holdout"] = "site"
    accepted = client.post("/train", data=data, files=files, headers=KEY)
    assert accepted.status_code == 202, accepted.text
    assert len(submitted.jobs) == 1
    # A site this run's data lacks, beside one it has, is held out of nothing: the general recipe
    # holds out both known sites.
    both = client.post("/train", data={**data, "holdout": ["site", "er"]}, files=files, headers=KEY)
    assert both.status_code == 202, both.text


def test_listing_training_jobs_is_paged(client: TestClient, submitted: FakeSubmitter, tmp_path: Path) -> None:
    data = zip_of({f"{name}/{i}.png": png_bytes() for name in ("glass", "paper") for i in range(3)})
    ids = []
    for _ in range(5):
        response = client.post(
            "/train", files={"file": ("d.zip", data)}, data={"model": "simple_cnn"}, headers=KEY
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    first = client.get("/train", params={"limit": 2})
    assert [job["id"] for job in first.json()] == ids[:2]
    assert first.headers["x-total-count"] == "5"
    assert first.headers["link"] == '</train?limit=2&offset=2&order=oldest>; rel="next"'
    last = client.get("/train", params={"limit": 2, "offset": 4})
    assert [job["id"] for job in last.json()] == ids[4:]
    assert "link" not in last.headers
    newest = client.get("/train", params={"limit": 3, "order": "newest"})
    assert [job["id"] for job in newest.json()] == ids[::-1][:3]
    assert client.get("/train", params={"limit": 0}).status_code == 422
    assert client.get("/train", params={"limit": 100_000}).status_code == 422
    assert client.get("/train", params={"offset": 10**20}).status_code == 422  # past SQLite's integers


def test_metrics_count_jobs_from_the_index(client: TestClient, settings: Settings) -> None:
    assert batch(client) == 202
    text = client.get("/metrics").text
    assert 'trashcam_jobs{kind="heatmaps",state="queued"} 1.0' in text
    assert 'trashcam_jobs{kind="training",state="queued"} 0.0' in text


def damaged(archive: bytes) -> bytes:
    """``archive`` with its first member's deflate stream overwritten from its start (an invalid block
    type: zlib's error, not the zip format's)."""
    start = archive.index(b"photos/0.png") + len("photos/0.png")
    return archive[:start] + b"\xff" * 64 + archive[start + 64 :]


@pytest.mark.parametrize("route", ["/explain/batch", "/train"])
def test_a_damaged_archive_is_422_saying_so(client: TestClient, submitted: FakeSubmitter, route: str) -> None:
    archive = damaged(
        zip_of({f"photos/{i}.png": png_bytes() for i in range(3)}, compression=zipfile.ZIP_DEFLATED)
    )
    field = "files" if route == "/explain/batch" else "file"
    response = client.post(route, files={field: ("damaged.zip", archive)}, headers=KEY)
    assert response.status_code == 422, response.text
    assert "unreadable archive" in response.json()["detail"]
    assert submitted.jobs == []


def test_a_source_tags_file_that_cannot_be_read_is_422(client: TestClient, submitted: FakeSubmitter) -> None:
    members = {f"{name}/{i}.png": png_bytes() for name in ("glass", "paper") for i in range(3)}
    members["manifest.csv"] = b"path,source\nglass/0.png," + b"x" * 200_000 + b"\n"  # past csv's field limit
    response = client.post(
        "/train", files={"file": ("d.zip", zip_of(members))}, data={"holdout": "sd"}, headers=KEY
    )
    assert response.status_code == 422, response.text
    assert "manifest.csv cannot be read" in response.json()["detail"]
    assert submitted.jobs == []
