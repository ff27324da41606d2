"""Job records in the SQL database (:mod:`core.database`), which every API replica and worker shares,
so that neither a restarted API, a crashed worker, a restarted Redis nor another host loses a job's state.

A record is one row of ``jobs``: the record itself as JSON, and what is asked of many jobs at once (kind,
state, whose, the bytes its folder holds). A cancellation is a column that only a cancel sets, so a
worker saving progress can never undo it. The job's folder, under the artifact root, is where its work
happens (a training run's checkpoints, a heatmap batch's inputs and zip). A worker holds a job through a
:class:`JobLease`: a Redis lock that a heartbeat keeps alive while the job runs, and a heartbeat row
that outlives a Redis restart, so that a job whose lock Redis lost is not taken for one whose worker
died.

Every record says which layout wrote it (``format``, :data:`JOB_FORMAT`), so that versions of the service
can run side by side during a rolling deploy: a worker that meets a record of a newer format puts the job
back for a newer worker (:class:`NewerRecordError`) instead of failing it, and no older version rewrites
such a record. Reading is lenient: a record that today's limits refuse (a limit tightened since it was
written, a parameter a newer version added) is read as it was stored rather than made unreadable.
"""

import contextlib
import functools
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import redis
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from redis.lock import Lock
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from core import database
from core.database import Database, open_database
from core.job_folder import RUN_DIR, JobFolder
from training.config import TrainConfig, make_config
from training.data import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from core.settings import Settings

JobKind = Literal["training", "heatmaps"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
JOB_KINDS: tuple[JobKind, ...] = ("training", "heatmaps")
JOB_STATES: tuple[JobState, ...] = ("queued", "running", *FINAL_STATES)
#: States of a job that holds a place in a queue or a worker.
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
_ID = re.compile(r"[0-9a-f]{32}")
logger = logging.getLogger(__name__)
LOCK_PREFIX = "trashcam:lock:"
#: A random id that Redis holds while it runs; a new one after a restart means queues were lost.
INSTANCE_KEY = "trashcam:instance"
#: What a heatmap batch accepts as photos: what a training data set may hold, listed in messages.
PHOTO_SUFFIXES = tuple(sorted(IMAGE_SUFFIXES))


#: The layout of the job records this version writes: 1, records written before they said theirs; 2, this
#: field added. Raised whenever a change to the record would mislead an older version that read it.
JOB_FORMAT = 2
#: The format of a record that does not say.
UNVERSIONED_FORMAT = 1


class JobNotFoundError(LookupError):
    pass


class NewerRecordError(RuntimeError):
    """The job's record was written by a newer version of the service: this one must neither run it nor
    rewrite it (a newer worker will)."""

    def __init__(self, job_id: str, found: int) -> None:
        super().__init__(
            f"job {job_id}: its record is format {found}, newer than this version's {JOB_FORMAT}; "
            "left for a worker of a newer version"
        )
        self.job_id = job_id
        self.found = found


class DatabaseAwayError(RuntimeError):
    """The database could not be reached while this worker held the job: the job is left as it was, to
    be tried again by the same ``holder`` (whose heartbeat the database may still hold, since it could
    not be removed)."""

    def __init__(self, job_id: str, holder: str) -> None:
        super().__init__(f"job {job_id}: the database cannot be reached; the job is left to be resumed")
        self.job_id = job_id
        self.holder = holder


def _from_store(info: ValidationInfo) -> bool:
    """Whether a record is being read from a store (:meth:`Job.from_stored`), not built anew."""
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


@functools.cache
def _field_type(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """A field's type without its limits (pydantic keeps those in the field's metadata)."""
    return TypeAdapter(model.model_fields[name].annotation or Any)


def _stored_fields(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """The values of ``data`` that ``model`` has fields for, each as its type reads it (a list of a
    tuple's items as a tuple), within today's limits or not; as stored when its type no longer reads it."""
    fields = {}
    for name, value in data.items():
        if name in model.model_fields:
            try:
                fields[name] = _field_type(model, name).validate_python(value)
            except ValidationError:
                fields[name] = value
    return fields


def _stored_training_params(data: dict[str, Any]) -> "TrainingParams":
    """Training parameters as a record stored them, without today's limits: what was valid when the job
    was created stays readable after a limit is tightened, and a parameter that a newer version added is
    left out. Only for reading records; new jobs are validated in full, and a job runs only within the
    limits (:meth:`TrainingParams.within_limits`)."""
    config = data.get("config")
    if not isinstance(config, dict):
        raise ValueError("a training record's params have no config")
    fields = _stored_fields(TrainingParams, {key: value for key, value in data.items() if key != "config"})
    # A record always names its model and source; should one not, it still reads, as before they were typed.
    return TrainingParams.model_construct(
        **{"name": "", "source": "", **fields},
        config=TrainConfig.model_construct(**_stored_fields(TrainConfig, config)),
    )


@dataclass(frozen=True)
class Heartbeat:
    """What a job's heartbeat says: who holds the job, and for how long a beat counts."""

    holder: str
    ttl: float
    age: float  # seconds since it was written

    @property
    def fresh(self) -> bool:
        return self.age < self.ttl


#: TrainConfig fields that name the server's files: never shown by the API.
SERVER_PATHS = ("data", "out", "init_from", "replay_manifest", "replay_data")


class TrainingParams(BaseModel):
    """What a training job runs, built and validated once, when the job is created."""

    kind: Literal["training"] = "training"
    #: The model name the result is registered under (a new version of it).
    name: str
    config: TrainConfig
    #: How the data was given, for people: ``upload:photos.zip, data_root:sets/bins``.
    source: str
    make_default: bool = False
    #: Processes the worker trains the run in, started by torchrun (``training.distributed``). A record
    #: without it (an older one) trains in one.
    processes: int = Field(1, ge=1, le=64)

    def within_limits(self) -> "TrainingParams":
        """These parameters validated against today's limits (a record read as stored may be outside
        them): ``ValueError`` naming what is outside."""
        try:
            return TrainingParams.model_validate(self.model_dump())
        except ValidationError as error:
            raise ValueError(f"the job's parameters are outside this version's limits: {error}") from None

    def public(self) -> dict[str, Any]:
        shown = self.model_dump(mode="json")
        shown["config"] = {k: v for k, v in shown["config"].items() if k not in SERVER_PATHS}
        # Which of the base's data sets are replayed, by name (where they are is the server's business).
        shown["config"]["replay_data_sets"] = [
            entry.partition("=")[0] if "=" in entry else Path(entry).name for entry in self.config.replay_data
        ]
        return shown


class HeatmapParams(BaseModel):
    """How a heatmap batch explains its photos (``POST /explain/batch`` declares the defaults)."""

    kind: Literal["heatmaps"] = "heatmaps"
    method: str
    colormap: str
    alpha: float = Field(ge=0.0, le=1.0)

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


JobParams = Annotated[TrainingParams | HeatmapParams, Field(discriminator="kind")]


class Job(BaseModel):
    # Fields written by another version of the service are ignored rather than fatal; a diverged run's
    # NaN loss is kept as NaN (JSON's null would not read back as a number).
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")

    id: str
    #: The layout of the record (:data:`JOB_FORMAT`); a record read from an older one is saved in this one.
    format: int = JOB_FORMAT
    params: JobParams
    #: The name of the API key that started it.
    submitted_by: str | None = None
    state: JobState = "queued"
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    #: Training: epochs begun (0 until the first starts), and planned (an early stop may end it sooner).
    epoch: int = 0
    epochs: int = 0
    #: Heatmaps: photos explained, and in the batch.
    images_done: int = 0
    images: int = 0
    progress: float = 0.0
    eta_seconds: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    #: The Redis instance that held this job's queue message when it was last queued.
    queued_on: str | None = None
    #: When its uploads, data, checkpoints and results were removed (see ``core.retention``).
    pruned_at: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any, info: ValidationInfo) -> Any:
        """Records written before job parameters were typed: the kind stood beside them, and a training
        job kept its recipe, options and data apart instead of its whole config. A stored record that
        says no format is of the first."""
        if _from_store(info) and isinstance(data, dict) and "format" not in data:
            data = {**data, "format": UNVERSIONED_FORMAT}
        if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
            return data
        params = dict(data["params"])
        if "kind" in params:
            return data
        params["kind"] = data.get("kind")
        if params["kind"] == "training" and "config" not in params:
            options = params.pop("options", {})
            config = make_config(
                params.pop("recipe", "paper"), data=params.pop("data"), out=RUN_DIR, **options
            )
            params["config"] = config.to_dict()
            params.setdefault("source", "")
        return {**data, "params": params}

    @field_validator("params", mode="wrap")
    @classmethod
    def _stored_params(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """Read from a store (``context={"stored": True}``), training parameters that today's limits
        refuse are taken as they were stored (:func:`_stored_training_params`)."""
        try:
            return handler(value)
        except ValidationError:
            if not (_from_store(info) and isinstance(value, dict) and value.get("kind") == "training"):
                raise
            return _stored_training_params(value)

    @property
    def kind(self) -> JobKind:
        return self.params.kind

    @property
    def from_newer_version(self) -> bool:
        """Whether a newer version of the service wrote the record: this one must not run or rewrite it."""
        return self.format > JOB_FORMAT

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> "Job":
        return cls.model_validate_json(text)

    @classmethod
    def from_stored(cls, text: str | bytes) -> "Job":
        """A record as a store holds it, read leniently (see :meth:`_stored_params`)."""
        return cls.model_validate_json(text, context={"stored": True})


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    return bool(_ID.fullmatch(text))


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of ``path`` itself); links inside are never followed."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for item in path.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # removed while counting
            if item.is_file() and not item.is_symlink():
                total += item.lstat().st_size
    return total


@dataclass(frozen=True)
class Usage:
    """What one key's jobs hold now."""

    active: int
    disk_bytes: int


class HeartbeatRow:
    """The row of one job's heartbeat: which worker holds the job, renewed while it works on it. A row,
    not a Redis key, so that it outlives a Redis restart (which drops every lock while the workers go on),
    and not a file, so that no host needs another's disk to know who holds a job."""

    def __init__(self, database: Database, job_id: str) -> None:
        self.database = database
        self.job_id = job_id

    def read(self, *, strict: bool = False) -> Heartbeat | None:
        """The heartbeat; None if there is none, or if the database cannot be read and not ``strict``
        (a holder that goes on beating treats it so; one about to take a job must know, and raises)."""
        table = database.job_heartbeats
        try:
            with self.database.read() as db:
                row = db.execute(
                    select(table.c.holder, table.c.ttl, table.c.beat_at).where(table.c.job_id == self.job_id)
                ).first()
        except SQLAlchemyError:
            if strict:
                raise
            logger.warning("could not read job %s's heartbeat", self.job_id, exc_info=True)
            return None
        return None if row is None else Heartbeat(row.holder, row.ttl, time.time() - row.beat_at)

    def write(self, holder: str, ttl: float) -> None:
        table = database.job_heartbeats
        statement = self.database.insert(table).values(
            job_id=self.job_id, holder=holder, ttl=ttl, beat_at=time.time()
        )
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.job_id],
            set_={
                "holder": statement.excluded.holder,
                "ttl": statement.excluded.ttl,
                "beat_at": statement.excluded.beat_at,
            },
        )
        try:
            with self.database.write() as db:
                db.execute(statement)
        except SQLAlchemyError:
            logger.warning("could not write job %s's heartbeat", self.job_id, exc_info=True)

    def remove(self, holder: str | None = None) -> None:
        """Remove the row (only ``holder``'s, when given)."""
        table = database.job_heartbeats
        condition = table.c.job_id == self.job_id
        if holder is not None:
            condition = condition & (table.c.holder == holder)
        with contextlib.suppress(SQLAlchemyError), self.database.write() as db:
            db.execute(delete(table).where(condition))


def _records() -> Select[Any]:
    """The columns a record is read from (:meth:`JobStore._parse`)."""
    table = database.jobs
    return select(table.c.id, table.c.format, table.c.record, table.c.cancel_requested)


class JobStore:
    """Job records in the SQL database (:mod:`core.database`), one row each, and each job's files in a
    folder of its own under ``jobs_dir`` (on the artifact root, which every host mounts)."""

    def __init__(self, client: redis.Redis, jobs_dir: str | os.PathLike[str], database_url: str) -> None:
        self.redis = client
        self.jobs_dir = Path(jobs_dir)
        self.database = open_database(database_url)

    @classmethod
    def from_url(cls, url: str, jobs_dir: str | os.PathLike[str], database_url: str) -> "JobStore":
        return cls(
            redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5), jobs_dir, database_url
        )

    @classmethod
    def from_settings(cls, settings: "Settings") -> "JobStore":
        return cls.from_url(settings.redis_url, settings.jobs_dir, settings.database)

    def folder(self, job_id: str) -> Path:
        if not _ID.fullmatch(job_id):
            raise JobNotFoundError(f"no job {job_id!r}")
        return self.jobs_dir / job_id

    def files(self, job_id: str) -> JobFolder:
        """The job's folder, its files by name."""
        return JobFolder(self.folder(job_id))

    # Records -------------------------------------------------------------------------------------
    def create(
        self,
        params: TrainingParams | HeatmapParams,
        *,
        job_id: str | None = None,
        submitted_by: str | None = None,
    ) -> Job:
        job = Job(id=job_id or new_job_id(), params=params, submitted_by=submitted_by)
        if isinstance(params, TrainingParams):
            job.epochs = params.config.epochs  # planned from the start; ``epoch`` counts those begun
        self.folder(job.id).mkdir(parents=True, exist_ok=True)
        self.save(job)
        return job

    def save(self, job: Job, *, if_state: JobState | None = None) -> bool:
        """Write the record (in this version's format); :class:`NewerRecordError` for a record of a newer
        format, which this version would write back without what it does not know, whether it was
        read so or a newer version rewrote it since. ``if_state``: only if the stored record is still in
        that state (False, nothing written, when it is not)."""
        if job.from_newer_version:
            raise NewerRecordError(job.id, job.format)
        job.format = JOB_FORMAT
        job.updated_at = time.time()
        # Measured when the folder stops changing for a while: submitted, finished, pruned.
        measured = folder_bytes(self.folder(job.id)) if job.state == "queued" or job.finished else None
        table = database.jobs
        insert = self.database.insert(table).values(
            id=job.id,
            kind=job.kind,
            state=job.state,
            format=job.format,
            created_at=job.created_at,
            updated_at=job.updated_at,
            submitted_by=job.submitted_by,
            disk_bytes=measured or 0,
            cancel_requested=False,
            record=job.to_json(),
        )
        changed = ["kind", "state", "format", "created_at", "updated_at", "submitted_by", "record"]
        if measured is not None:
            changed.append("disk_bytes")
        condition = table.c.format <= JOB_FORMAT
        if if_state is not None:
            condition = condition & (table.c.state == if_state)
        statement = insert.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={name: insert.excluded[name] for name in changed},
            where=condition,
        ).returning(table.c.id)
        with self.database.write() as db:
            # No row back: the stored one is newer, or not in the state asked for (the driver's rowcount
            # does not say so on every database).
            if db.execute(statement).first() is not None:
                return True
            found = db.execute(select(table.c.format).where(table.c.id == job.id)).scalar_one()
        if found > JOB_FORMAT:
            raise NewerRecordError(job.id, found)
        return False

    def measure(self, job: Job) -> None:
        """Measure the job's folder again (after its files were removed): what the key's quota counts."""
        table = database.jobs
        with self.database.write() as db:
            db.execute(
                update(table).where(table.c.id == job.id).values(disk_bytes=folder_bytes(self.folder(job.id)))
            )

    def discard(self, job_id: str) -> None:
        """Remove a job that never ran (its queue was unreachable, its upload refused): folder and row."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)
        with self.database.write() as db:
            db.execute(delete(database.jobs).where(database.jobs.c.id == job_id))
            db.execute(delete(database.job_heartbeats).where(database.job_heartbeats.c.job_id == job_id))

    def page(
        self, kind: JobKind, *, limit: int, offset: int = 0, order: Literal["oldest", "newest"] = "oldest"
    ) -> tuple[list[Job], int]:
        """One page of ``kind``'s jobs by submission time, and how many there are in all."""
        table = database.jobs
        by = (
            (table.c.created_at, table.c.id)
            if order == "oldest"
            else (table.c.created_at.desc(), table.c.id.desc())
        )
        with self.database.read() as db:
            rows = db.execute(
                _records().where(table.c.kind == kind).order_by(*by).limit(limit).offset(offset)
            ).all()
            total = db.execute(
                select(func.count()).select_from(table).where(table.c.kind == kind)
            ).scalar_one()
        return self._readable(rows), int(total)

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs there are of each (kind, state)."""
        table = database.jobs
        with self.database.read() as db:
            rows = db.execute(
                select(table.c.kind, table.c.state, func.count()).group_by(table.c.kind, table.c.state)
            )
            return {(kind, state): int(count) for kind, state, count in rows}

    def queued_count(self) -> int:
        table = database.jobs
        with self.database.read() as db:
            return int(
                db.execute(
                    select(func.count()).select_from(table).where(table.c.state == "queued")
                ).scalar_one()
            )

    def usage(self, submitted_by: str | None) -> Usage:
        """What one key's jobs hold: how many are queued or running, and their folders' bytes."""
        table = database.jobs
        whose = (
            table.c.submitted_by.is_(None) if submitted_by is None else table.c.submitted_by == submitted_by
        )
        with self.database.read() as db:
            active = db.execute(
                select(func.count()).select_from(table).where(whose, table.c.state.in_(ACTIVE_STATES))
            ).scalar_one()
            disk = db.execute(
                select(func.coalesce(func.sum(table.c.disk_bytes), 0)).where(whose)
            ).scalar_one()
        return Usage(int(active), int(disk))

    def get(self, job_id: str) -> Job:
        """The job's record; :class:`JobNotFoundError` when there is none or it cannot be read, and
        :class:`NewerRecordError` when a newer version wrote it in a way this one cannot read."""
        self.folder(job_id)  # refuses what is not a job id
        table = database.jobs
        with self.database.read() as db:
            row = db.execute(_records().where(table.c.id == job_id)).first()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return self._parse(row)

    def _parse(self, row: Any) -> Job:
        try:
            job = Job.from_stored(row.record)
        except (ValueError, TypeError) as error:
            # A newer version's record that this one cannot parse (a new state, say) is that version's
            # to handle, not a record lost.
            if row.format > JOB_FORMAT:
                raise NewerRecordError(row.id, row.format) from None
            raise JobNotFoundError(f"job {row.id!r} has an unreadable record: {error}") from None
        job.cancel_requested = job.cancel_requested or bool(row.cancel_requested)
        return job

    def _readable(self, rows: Sequence[Any]) -> list[Job]:
        found = []
        for row in rows:
            try:
                found.append(self._parse(row))
            except (JobNotFoundError, NewerRecordError) as error:  # unreadable here
                logger.warning("skipping %s: %s", row.id, error)
        return found

    def all(self) -> Iterator[Job]:
        table = database.jobs
        with self.database.read() as db:
            rows = db.execute(_records().order_by(table.c.id)).all()
        yield from self._readable(rows)

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

    # Cancellation --------------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> Job:
        """Ask for a job to stop. A queued job is cancelled at once; a running one at its next step."""
        job = self.get(job_id)
        if job.finished:
            return job
        table = database.jobs
        with self.database.write() as db:
            db.execute(update(table).where(table.c.id == job_id).values(cancel_requested=True))
        job.cancel_requested = True
        # A newer version's record is left to it: its worker finds the flag and cancels the job.
        if job.state == "queued" and not self.locked(job_id) and not job.from_newer_version:
            job.state, job.finished_at = "cancelled", time.time()
            if not self.save(job, if_state="queued"):
                return self.get(job_id)  # a worker started it meanwhile: it hears the flag
        return job

    def cancel_requested(self, job_id: str) -> bool:
        table = database.jobs
        with self.database.read() as db:
            return bool(db.execute(select(table.c.cancel_requested).where(table.c.id == job_id)).scalar())

    # Ownership -----------------------------------------------------------------------------------
    def lease(self, job_id: str, ttl_seconds: int, *, holder: str | None = None) -> "JobLease":
        """A lease on the job, as ``holder`` (a lease of this worker's that the database's absence left
        behind) or as a new one."""
        self.folder(job_id)
        heartbeat = HeartbeatRow(self.database, job_id)
        return JobLease(self.redis, LOCK_PREFIX + job_id, ttl_seconds, heartbeat, holder=holder)

    def locked(self, job_id: str) -> bool:
        return bool(self.redis.exists(LOCK_PREFIX + job_id))

    def heartbeat(self, job_id: str) -> Heartbeat | None:
        """The job's heartbeat: which worker last showed it was alive and working on it, and when."""
        return HeartbeatRow(self.database, job_id).read()

    def orphans(self) -> list[Job]:
        """Unfinished jobs that nothing is working on and that no queue holds any more.

        A running job lost its worker when neither its lock nor its heartbeat is fresh (the row says how
        long its beats count, so the workers' settings decide, not the reader's); the row matters after
        a Redis restart, which drops every lock while the workers go on (each takes its lock back at its
        next beat). A queued job whose message went to an earlier Redis instance lost that message when
        Redis restarted (it keeps nothing on disk). Either is safe to submit again: training resumes from
        its last checkpoint and heatmap batches are recomputed.
        """
        instance = self.redis_instance()
        table = database.jobs
        with self.database.read() as db:
            rows = db.execute(
                _records().where(table.c.state.in_(ACTIVE_STATES), table.c.format <= JOB_FORMAT)
            ).all()
        found = []
        for job in self._readable(rows):
            beat = self.heartbeat(job.id)
            if job.state == "running":
                if not self.locked(job.id) and not (beat is not None and beat.fresh):
                    found.append(job)
            elif job.queued_on != instance:
                found.append(job)
            elif beat is not None and not beat.fresh and not self.locked(job.id):
                # A worker took its message, then lost the database (and with it the message) before
                # it could mark the job running: only its heartbeat says so.
                found.append(job)
        return found


class JobLease:
    """A Redis lock on one job, kept alive by a heartbeat thread while the job runs, which also renews
    the job's heartbeat row (its holder and time to live).

    Only one lease holds a job: the lock is refused while another holder's heartbeat is fresh,
    since after a Redis restart that holder still runs and takes its lock back at its next beat.
    ``lost`` is set when another holder's heartbeat appears (this worker stalled past the time to live and
    the job was given to another); the job's work should then stop, writing nothing.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        ttl_seconds: int,
        heartbeat: HeartbeatRow,
        *,
        holder: str | None = None,
    ) -> None:
        # Not thread-local: the heartbeat thread extends the lock the job's thread acquired.
        self._redis = client
        self._key = key
        self._lock = Lock(client, key, timeout=ttl_seconds, blocking=False, thread_local=False)
        self.ttl = ttl_seconds
        self.heartbeat = heartbeat
        self.holder = holder or uuid.uuid4().hex
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the job; False when another holder has it. A database that cannot be read raises: whether
        another worker still beats on the job cannot be known then."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            beat = self.heartbeat.read(strict=True)
        except BaseException:
            with contextlib.suppress(redis.RedisError, redis.exceptions.LockError):
                self._lock.release()
            raise
        if beat is not None and beat.holder != self.holder and beat.fresh:
            with contextlib.suppress(redis.RedisError, redis.exceptions.LockError):
                self._lock.release()
            return False
        self._write_heartbeat()
        self._heartbeat = threading.Thread(target=self._beat, name="job-lease", daemon=True)
        self._heartbeat.start()
        return True

    def _held_elsewhere(self) -> bool:
        beat = self.heartbeat.read()
        return beat is not None and beat.holder != self.holder and beat.fresh

    def _write_heartbeat(self) -> None:
        self.heartbeat.write(self.holder, self.ttl)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if self._held_elsewhere():
                self.lost.set()
                return
            try:
                self._lock.reacquire()
            except redis.exceptions.LockNotOwnedError:
                # Redis lost the lock (a restart): take it back if it is free. If another worker has it,
                # it is about to give it up (this heartbeat is fresh), or it took the job over when this
                # one stalled, and its heartbeat says so at the next beat; either way this one is not
                # renewed.
                # A Redis that fails the attempt itself (still starting) is Redis down, as below.
                try:
                    if not self._lock.acquire(blocking=False):
                        continue
                except redis.RedisError:
                    logger.warning("could not take a job lease back; retrying", exc_info=True)
            except redis.RedisError:
                # Redis is down, so no one can take the lock: the heartbeat shows that the work goes on.
                logger.warning("could not renew a job lease; retrying", exc_info=True)
            self._write_heartbeat()

    def holds(self) -> bool:
        """Whether this lease still holds the job, asked of the database and Redis now, not at the next
        beat: no other holder's fresh heartbeat, and the lock this lease's or free (Redis lost it)."""
        if self.lost.is_set() or self._held_elsewhere():
            return False
        try:
            return bool(self._lock.owned()) or not self._redis.exists(self._key)
        except redis.RedisError:
            return True  # no one can take a lock from a Redis that is down

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        self.heartbeat.remove(self.holder)
        with contextlib.suppress(redis.RedisError, redis.exceptions.LockError):
            self._lock.release()
