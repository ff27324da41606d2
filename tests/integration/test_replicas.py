"""Two API replicas on two ports with local dirs of their own, nginx in front of them, two training
workers and a heatmap worker, one PostgreSQL database, one Redis and one shared artifact root: real
processes over loopback, each started as docker-compose.yml starts it (bench.deployment)."""

import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from bench.deployment import Clients, Deployment, start_training
from core.model_manager import model_store
from core.settings import Settings
from tests.app.conftest import API_KEY, tiny_checkpoint
from tests.faults import Relay, relayed_postgres_database
from tests.integration.conftest import zip_folder

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": API_KEY}
REPLICAS = ("api-a", "api-b")


@pytest.fixture(scope="module")
def database_relay() -> Iterator[tuple[Relay, str]]:
    """A PostgreSQL database of the module's own, which every piece reaches through a relay that a test
    cuts and restores, as a restart of the server would."""
    with relayed_postgres_database() as relayed:
        yield relayed


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, database_relay: tuple[Relay, str]
) -> Iterator[Deployment]:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file():
        pytest.fail("nginx is needed for this test: `make test` installs Debian's package")
    root = tmp_path_factory.mktemp("deployment")
    deployed = Deployment.create(
        root,
        database_url=database_relay[1],
        shipped_model=tiny_checkpoint(root / "shipped.pt"),
        api_keys=f'["{API_KEY}"]',
        job_lock_seconds="5",
        job_recovery_interval_seconds="1",
    )
    try:
        for name in REPLICAS:
            deployed.start_api(name)
        deployed.start_nginx(REPLICAS)
        deployed.start_worker("training-worker", "training-1")
        deployed.start_worker("training-worker", "training-2")
        deployed.start_worker("heatmap-worker", "heatmaps-1")
        yield deployed
    finally:
        deployed.stop()


def client(deployment: Deployment, name: str | None = None) -> httpx2.Client:
    return httpx2.Client(base_url=deployment.url(name), timeout=60)


def wait_for_job(api: httpx2.Client, url: str, states: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(url).json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"{url} never reached {states}; last: {job}")


def classifying(photo: bytes) -> Callable[[httpx2.Client], httpx2.Response]:
    return lambda api: api.post("/classify", files={"file": ("a.jpg", photo)})


def listing_jobs(api: httpx2.Client) -> httpx2.Response:
    return api.get("/train")


def photo_bytes(trashnet_photos: Path) -> bytes:
    return sorted((trashnet_photos / "glass").glob("*.jpg"))[0].read_bytes()


def test_a_job_submitted_through_one_replica_is_followed_and_cancelled_through_the_other(
    deployment: Deployment, trashnet_photos: Path
) -> None:
    with client(deployment, "api-a") as a, client(deployment, "api-b") as b:
        created = start_training(a, zip_folder(trashnet_photos), API_KEY, epochs=500)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert job_id in [job["id"] for job in b.get("/train").json()]
        assert wait_for_job(b, f"/train/{job_id}", {"running"})["state"] == "running"
        assert b.delete(f"/train/{job_id}", headers=KEY).json()["cancel_requested"] is True
        assert (
            wait_for_job(a, f"/train/{job_id}", {"cancelled", "failed", "succeeded"})["state"] == "cancelled"
        )


def test_a_new_default_on_one_replica_reaches_the_other_within_5_s_and_no_request_fails(
    deployment: Deployment, trashnet_photos: Path, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=deployment.env["TRASHCAM_DATABASE_URL"],
        artifact_root=Path(deployment.env["TRASHCAM_ARTIFACT_ROOT"]),
        var_dir=tmp_path / "var",
    )
    version = model_store(settings).add("site-a", tiny_checkpoint(tmp_path / "site.pt", seed=7))
    with client(deployment, "api-a") as a, client(deployment, "api-b") as b:
        with Clients(deployment.url(), 4, classifying(photo_bytes(trashnet_photos))) as load:
            time.sleep(1)
            switched = a.put(
                "/models/default", json={"name": "site-a", "version": version.version}, headers=KEY
            )
            assert switched.status_code == 200, switched.text
            started = time.monotonic()
            while b.get("/ready").json()["model"]["sha256"] != version.sha256:
                assert time.monotonic() - started < 5, "replica B still serves the old model after 5 s"
                time.sleep(0.1)
            time.sleep(1)
        assert load.answers, "the load sent nothing"
        assert load.failed(0) == []
        answered = a.post("/classify", files={"file": ("a.jpg", photo_bytes(trashnet_photos))}).json()
        assert answered["results"][0]["model"]["version"] == version.version


def test_a_worker_killed_mid_job_is_taken_over_by_the_other_and_the_job_ends_once(
    deployment: Deployment, trashnet_photos: Path
) -> None:
    with client(deployment) as api:
        created = start_training(api, zip_folder(trashnet_photos), API_KEY, epochs=6, name="survivor")
        url = created.headers["location"]
        job_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while api.get(url).json()["epoch"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        holder = next(name for name in ("training-1", "training-2") if job_id in deployment.log(name))
        deployment.kill(holder)  # SIGKILL mid-run: no clean shutdown, no acknowledgement
        job = wait_for_job(api, url, {"succeeded", "failed", "cancelled"}, timeout=240)
        other = "training-2" if holder == "training-1" else "training-1"
        assert job["state"] == "succeeded", (job["error"], deployment.log(other)[-4000:])
        assert job["attempts"] >= 2
        assert [record["epoch"] for record in job["history"]][-1] == 6
        assert job_id in deployment.log(other)
        assert len(api.get("/models/survivor").json()) == 1  # registered once
        deployment.start_worker("training-worker", holder)


def test_while_postgresql_is_away_what_needs_it_is_503_and_nothing_is_lost(
    deployment: Deployment, database_relay: tuple[Relay, str], trashnet_photos: Path
) -> None:
    relay = database_relay[0]
    with client(deployment) as api:
        created = start_training(
            api, zip_folder(trashnet_photos), API_KEY, epochs=40, name="through-the-outage"
        )
        url = created.headers["location"]
        wait_for_job(api, url, {"running"})
        before = [job["id"] for job in api.get("/train").json()]
        with (
            Clients(deployment.url(), 2, classifying(photo_bytes(trashnet_photos))) as classifications,
            Clients(deployment.url(), 2, listing_jobs) as listing,
        ):
            time.sleep(1)
            cut_at = time.monotonic()
            relay.cut()  # every connection to PostgreSQL ends, and no new one is accepted
            time.sleep(3)
            restored_at = time.monotonic()
            relay.restore()
            time.sleep(3)
        while_away = [answer for answer in listing.answers if cut_at + 0.5 <= answer[0] < restored_at]
        assert while_away, "no listing was answered while the database was away"
        assert {status for _, status, _ in while_away} == {503}
        assert {retry for _, _, retry in while_away} == {"5"}
        assert listing.failed(restored_at + 2) == []
        assert classifications.failed() == []  # classifying needs no database
        assert [job["id"] for job in api.get("/train").json()] == before
        # The job that was training then goes on, or is resumed, and ends once.
        job = wait_for_job(api, url, {"succeeded", "failed", "cancelled"}, timeout=300)
        assert job["state"] == "succeeded", job["error"]
        assert [record["epoch"] for record in job["history"]][-1] == 40
        assert len(api.get("/models/through-the-outage").json()) == 1


def test_killing_a_replica_under_load_fails_no_request_after_the_first_second(
    deployment: Deployment, trashnet_photos: Path
) -> None:
    with Clients(deployment.url(), 4, classifying(photo_bytes(trashnet_photos))) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        deployment.kill("api-a", signal.SIGKILL)
        time.sleep(6)
    assert [status for at, status, _ in load.answers if at > killed_at + 1]  # it went on
    assert load.failed(killed_at + 1) == []
    deployment.start_api("api-a")  # back on its port: nginx sends it requests again
    with client(deployment, "api-a") as a:
        assert a.get("/ready").status_code == 200
