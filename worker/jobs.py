"""Job records kept in Redis (fast, shared) and on disk (durable), so that neither a restarted API, a
crashed worker nor a restarted Redis loses a job's state.

A record lives at ``<jobs_dir>/<id>/job.json`` and under the Redis key ``trashcam:job:<id>``. Every
write goes to both; reads prefer Redis and fall back to the file. The job's folder is also where its
work happens (a training run's checkpoints, a heatmap batch's inputs and zip).
"""

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis

from models.files import atomic_write_bytes

JobKind = Literal["training", "heatmaps"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
_ID = re.compile(r"^[0-9a-f]{32}$")
KEY_PREFIX = "trashcam:job:"
LOCK_PREFIX = "trashcam:lock:"
#: A random id that Redis holds while it runs; a new one after a restart means queues were lost.
INSTANCE_KEY = "trashcam:instance"


class JobNotFoundError(LookupError):
    pass


@dataclass
class Job:
    id: str
    kind: JobKind
    params: dict[str, Any]
    state: JobState = "queued"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    epoch: int = 0
    epochs: int = 0
    progress: float = 0.0
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    #: The Redis instance that held this job's queue message when it was last queued.
    queued_on: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Job":
        return cls(**json.loads(text))


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, client: redis.Redis, jobs_dir: str | os.PathLike[str]) -> None:
        self.redis = client
        self.jobs_dir = Path(jobs_dir)

    @classmethod
    def from_url(cls, url: str, jobs_dir: str | os.PathLike[str]) -> "JobStore":
        return cls(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5), jobs_dir)

    def folder(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise JobNotFoundError(f"no job {job_id!r}")
        return self.jobs_dir / job_id

    # Records -------------------------------------------------------------------------------------
    def create(self, kind: JobKind, params: dict[str, Any], *, job_id: str | None = None) -> Job:
        job = Job(id=job_id or new_job_id(), kind=kind, params=params)
        self.folder(job.id).mkdir(parents=True, exist_ok=True)
        self.save(job)
        return job

    def save(self, job: Job) -> None:
        job.updated_at = time.time()
        text = job.to_json()
        atomic_write_bytes(self.folder(job.id) / "job.json", text.encode())
        # The file is the durable copy; Redis is refilled from it on the next read if this fails.
        with contextlib.suppress(redis.RedisError):
            self.redis.set(KEY_PREFIX + job.id, text)

    def get(self, job_id: str) -> Job:
        try:
            cached = self.redis.get(KEY_PREFIX + job_id) if _ID.match(job_id) else None
        except redis.RedisError:
            cached = None
        if isinstance(cached, bytes | str):
            return Job.from_json(cached)
        path = self.folder(job_id) / "job.json"
        if not path.is_file():
            raise JobNotFoundError(f"no job {job_id!r}")
        job = Job.from_json(path.read_text(encoding="utf-8"))
        with contextlib.suppress(redis.RedisError):
            self.redis.set(KEY_PREFIX + job_id, job.to_json())
        return job

    def redis_instance(self) -> str:
        """The running Redis server's instance id (created by whoever asks first after a start)."""
        self.redis.set(INSTANCE_KEY, uuid.uuid4().hex, nx=True)
        value = self.redis.get(INSTANCE_KEY)
        return value.decode() if isinstance(value, bytes) else str(value)

    def mark_queued(self, job: Job) -> None:
        """Record that ``job``'s message is now in the queues of the running Redis."""
        job.state = "queued"
        job.queued_on = self.redis_instance()
        self.save(job)

    def all(self) -> Iterator[Job]:
        if not self.jobs_dir.is_dir():
            return
        for folder in sorted(self.jobs_dir.iterdir()):
            if _ID.match(folder.name) and (folder / "job.json").is_file():
                yield Job.from_json((folder / "job.json").read_text(encoding="utf-8"))

    def request_cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.finished:
            job.cancel_requested = True
            if job.state == "queued":
                job.state, job.finished_at = "cancelled", time.time()
            self.save(job)
        return job

    def cancel_requested(self, job_id: str) -> bool:
        return self.get(job_id).cancel_requested

    # Ownership: one worker runs a job at a time --------------------------------------------------
    def acquire(self, job_id: str, owner: str, ttl_seconds: int) -> bool:
        return bool(self.redis.set(LOCK_PREFIX + job_id, owner, nx=True, ex=ttl_seconds))

    def renew(self, job_id: str, owner: str, ttl_seconds: int) -> bool:
        """Extend the lock if ``owner`` still holds it."""
        key = LOCK_PREFIX + job_id
        current = self.redis.get(key)
        if current is None:
            return bool(self.redis.set(key, owner, nx=True, ex=ttl_seconds))
        if (current.decode() if isinstance(current, bytes) else str(current)) != owner:
            return False
        return bool(self.redis.expire(key, ttl_seconds))

    def release(self, job_id: str, owner: str) -> None:
        key = LOCK_PREFIX + job_id
        current = self.redis.get(key)
        if (
            current is not None
            and (current.decode() if isinstance(current, bytes) else str(current)) == owner
        ):
            self.redis.delete(key)

    def locked(self, job_id: str) -> bool:
        return bool(self.redis.exists(LOCK_PREFIX + job_id))

    def orphans(self) -> list[Job]:
        """Unfinished jobs that nothing is working on and that no queue holds any more.

        A running job whose lock expired lost its worker; a queued job whose message went to an
        earlier Redis instance lost that message when Redis restarted (it keeps nothing on disk).
        Either is safe to submit again: training resumes from its last checkpoint and heatmap
        batches are recomputed.
        """
        instance = self.redis_instance()
        found = []
        for job in self.all():
            if job.finished or job.cancel_requested:
                continue
            lost_worker = job.state == "running" and not self.locked(job.id)
            lost_message = job.state == "queued" and job.queued_on != instance
            if lost_worker or lost_message:
                found.append(job)
        return found
