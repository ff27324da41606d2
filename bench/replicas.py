"""Several hosts on one machine under load (bench.deployment): two API replicas behind nginx, two training
workers and a heatmap worker, one PostgreSQL database, one Redis, one artifact root. Through nginx,
``--clients`` clients classify photos one after another for the whole run while the script:

1. promotes a new default through replica A and measures how long replica B takes to serve it;
2. kills a training worker mid-job (SIGKILL) and measures how long the other takes to resume the job;
3. restarts the PostgreSQL server (``--postgres-restart``, a command; it restarts the server the whole
   machine uses) while a second set of clients lists jobs, which needs the database;
4. kills replica A (SIGKILL) and counts failed requests after the first second.

Every answer's status is kept; the record says what failed, when, and the timings.

    python -m bench.replicas --photos data/trashnet-112.tar.gz --out docs/reliability/replicas.json
"""

import argparse
import io
import json
import shlex
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import torch
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from bench.deployment import Clients, Deployment, start_training
from bench.record import run_record, write_json
from core.database import dispose_database
from core.model_manager import model_store
from core.settings import Settings
from models.checkpoint import ModelSpec, save_checkpoint
from models.registry import create_model
from models.transforms import IMAGENET_MEAN, IMAGENET_STD

API_KEY = "bench-replicas-key-0123456789"
KEY = {"X-API-Key": API_KEY}
CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def tiny_model(path: Path, seed: int) -> Path:
    """A small random CNN with a real spec: the service's work, not the network's, is what is measured."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        arch="simple_cnn",
        class_names=CLASSES,
        input_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        arch_kwargs={"width": 4},
        recipe={"note": "random weights for bench.replicas"},
        metrics={},
    )
    save_checkpoint(path, create_model("simple_cnn", num_classes=len(CLASSES), width=4), spec)
    return path


def photos_of(archive: Path, per_class: int) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {label: [] for label in CLASSES}
    with tarfile.open(archive) as tar:
        for member in tar:
            label = Path(member.name).parent.name
            if (
                member.isfile()
                and member.name.endswith(".jpg")
                and len(found.get(label, [1] * 99)) < per_class
            ):
                data = tar.extractfile(member)
                assert data is not None
                found[label].append(data.read())
    return found


def zip_of(photos: dict[str, list[bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, items in photos.items():
            for number, data in enumerate(items):
                archive.writestr(f"{label}/{number}.jpg", data)
    return buffer.getvalue()


def wait_job(
    api: httpx2.Client, url: str, check: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = api.get(url).json()
        if check(job):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"{url}: condition not met in {timeout} s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    server = args.postgres
    name = f"trashcam_bench_{uuid.uuid4().hex[:8]}"
    # No pool: the restart below ends every open connection.
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = f"{server}/{name}"
    photos = photos_of(args.photos, 4)
    one_photo = photos["glass"][0]
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        deployment = Deployment.create(
            root,
            database_url=url,
            shipped_model=tiny_model(root / "shipped.pt", seed=0),
            api_keys=f'["{API_KEY}"]',
            job_lock_seconds=str(args.lock_seconds),
            job_recovery_interval_seconds="1",
        )
        try:
            started = time.monotonic()
            for replica in ("api-a", "api-b"):
                deployment.start_api(replica)
            deployment.start_nginx(("api-a", "api-b"))
            for piece, host in (
                ("training-worker", "training-1"),
                ("training-worker", "training-2"),
                ("heatmap-worker", "heatmaps-1"),
            ):
                deployment.start_worker(piece, host)
            record["start_up_s"] = round(time.monotonic() - started, 1)
            settings = Settings(database_url=url, artifact_root=root / "artifacts", var_dir=root / "tool")
            site = model_store(settings).add("site-a", tiny_model(root / "site.pt", seed=7))
            a, b = (httpx2.Client(base_url=deployment.url(r), timeout=60) for r in ("api-a", "api-b"))
            t0 = time.monotonic()
            load = Clients(
                deployment.url(),
                args.clients,
                lambda api: api.post("/classify", files={"file": ("a.jpg", one_photo)}),
            ).start()
            time.sleep(args.phase_seconds)

            # 1. A new default, promoted through A, served by B.
            switched_at = time.monotonic()
            a.put(
                "/models/default", json={"name": "site-a", "version": site.version}, headers=KEY
            ).raise_for_status()
            while b.get("/ready").json()["model"]["sha256"] != site.sha256:
                time.sleep(0.05)
            record["default_switch"] = {"reached_b_s": round(time.monotonic() - switched_at, 3)}
            time.sleep(args.phase_seconds)

            # 2. A training worker killed mid-job.
            created = start_training(a, zip_of(photos), API_KEY, epochs=args.epochs, name="survivor")
            created.raise_for_status()
            job_url, job_id = created.headers["location"], created.json()["id"]
            wait_job(a, job_url, lambda job: job["epoch"] >= 2, 300)
            holder = next(h for h in ("training-1", "training-2") if job_id in deployment.log(h))
            killed_at = time.monotonic()
            deployment.kill(holder)
            resumed = wait_job(
                b, job_url, lambda job: job["attempts"] >= 2 and job["state"] == "running", 300
            )
            taken_over_s = time.monotonic() - killed_at
            done = wait_job(b, job_url, lambda job: job["state"] in {"succeeded", "failed", "cancelled"}, 600)
            record["worker_takeover"] = {
                "killed": holder,
                "lease_seconds": args.lock_seconds,
                "running_again_s": round(taken_over_s, 2),
                "epoch_when_resumed": resumed["epoch"],
                "state": done["state"],
                "attempts": done["attempts"],
                "last_epoch": done["history"][-1]["epoch"] if done["history"] else None,
                "versions_registered": len(b.get("/models/survivor").json()),
            }
            deployment.start_worker("training-worker", holder)

            # 3. PostgreSQL restarted while clients list jobs and a job trains.
            if args.postgres_restart:
                training = start_training(
                    a, zip_of(photos), API_KEY, epochs=args.epochs, name="through-the-restart"
                )
                training.raise_for_status()
                training_url = training.headers["location"]
                wait_job(a, training_url, lambda job: job["epoch"] >= 2, 300)
                listing = Clients(deployment.url(), 4, lambda api: api.get("/train")).start()
                time.sleep(args.phase_seconds / 2)
                restart_at = time.monotonic()
                subprocess.run(shlex.split(args.postgres_restart), check=True)
                restart_s = time.monotonic() - restart_at
                time.sleep(args.phase_seconds)
                listing.stop()
                after = listing.summary(t0, since=restart_at)
                trained = wait_job(
                    b, training_url, lambda job: job["state"] in {"succeeded", "failed", "cancelled"}, 600
                )
                record["postgres_restart"] = {
                    "command": args.postgres_restart,
                    "restart_took_s": round(restart_s, 2),
                    "listing_before": listing.summary(t0, until=restart_at),
                    "listing_since": after,
                    "jobs_after": len(a.get("/train").json()),
                    "job_training_through_it": {
                        "state": trained["state"],
                        "error": trained["error"],
                        "attempts": trained["attempts"],
                        "last_epoch": trained["history"][-1]["epoch"] if trained["history"] else None,
                        "versions_registered": len(b.get("/models/through-the-restart").json()),
                    },
                }

            # 4. Replica A killed under load.
            time.sleep(args.phase_seconds / 2)
            killed_api_at = time.monotonic()
            deployment.kill("api-a", signal.SIGKILL)
            time.sleep(args.phase_seconds)
            load.stop()
            record["replica_killed"] = {
                "at_s": round(killed_api_at - t0, 3),
                "first_second": load.summary(t0, since=killed_api_at, until=killed_api_at + 1),
                "after_first_second": load.summary(t0, since=killed_api_at + 1),
            }
            record["load"] = {
                "clients": args.clients,
                "seconds": round(time.monotonic() - t0, 1),
                **load.summary(t0),
            }
            a.close()
            b.close()
        finally:
            deployment.stop()
    dispose_database(url)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--photos", type=Path, default=Path("data/trashnet-112.tar.gz"), help="TrashNet's archive"
    )
    parser.add_argument(
        "--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432", help="the server"
    )
    parser.add_argument(
        "--postgres-restart",
        default="service postgresql restart",
        help="a command that restarts that server; '' to leave it alone",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="load before and after each event")
    parser.add_argument("--epochs", type=int, default=30, help="of the job whose worker is killed")
    parser.add_argument("--lock-seconds", type=int, default=10, help="TRASHCAM_JOB_LOCK_SECONDS")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    figures = run(args)
    record = run_record("bench.replicas", argv, torch.device("cpu"), **figures)
    print(json.dumps(record, indent=2))
    if args.out is not None:
        write_json(args.out, record)


if __name__ == "__main__":
    main()
