"""An index of the job records, so that listing, counting and quotas do not read every record.

The records in ``<jobs_dir>/<id>/job.json`` stay the authority; this SQLite file beside them holds what
is asked of many jobs at once: kind, state, when, whose, and the bytes the job's folder holds. Every
save of a record updates its row (the later save wins when two processes save at once), and
:meth:`core.jobs.JobStore.reconcile` brings the index back in line with the records (after a crash
between the two writes, or for records an older version wrote) by their files' modification times,
reading only the records that changed.
"""

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

DATABASE = "index.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    submitted_by TEXT,
    disk_bytes INTEGER NOT NULL DEFAULT 0,
    record_mtime_ns INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_kind ON jobs (kind, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (submitted_by, state);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
"""
#: States of a job that holds a place in a queue or a worker.
ACTIVE_STATES = ("queued", "running")


@dataclass(frozen=True)
class IndexedJob:
    """One record's row: what listing, counting and quotas need."""

    id: str
    kind: str
    state: str
    created_at: float
    submitted_by: str | None
    #: The job folder's size when the row was last measured (submitted, finished, pruned), in bytes.
    disk_bytes: int | None = None
    record_mtime_ns: int = 0
    #: The record's own time of saving: of two writers at once, the row keeps the later one's.
    updated_at: float = 0.0


@dataclass(frozen=True)
class Usage:
    """What one key's jobs hold now."""

    active: int
    disk_bytes: int


class JobIndex:
    def __init__(self, jobs_dir: Path) -> None:
        self.path = jobs_dir / DATABASE
        self._created = False

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per call: cheap, and a connection may not cross threads. Workers and the API
        # write to the same file from several processes; WAL (kept in the file) lets readers go on
        # meanwhile. The tables are made once per process, or again if the file was removed: making
        # them takes the write lock, which every query would otherwise wait for.
        fresh = not self._created or not self.path.exists()
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            if fresh:
                db.execute("PRAGMA journal_mode = WAL")
                db.executescript(SCHEMA)
                self._created = True
            with db:
                yield db
        finally:
            db.close()

    def record(self, row: IndexedJob, *, force: bool = False) -> None:
        """Insert or update ``row``; a row without ``disk_bytes`` keeps the size measured before. An
        update older than the row (another process saved the record since) is dropped unless ``force``
        (the record on disk was read just now, and is the authority)."""
        newer = "" if force else "WHERE excluded.updated_at >= jobs.updated_at"
        with self._connect() as db:
            db.execute(
                f"""
                INSERT INTO jobs (
                    id, kind, state, created_at, submitted_by, disk_bytes, record_mtime_ns, updated_at
                )
                VALUES (?, ?, ?, ?, ?, COALESCE(?, 0), ?, ?)
                ON CONFLICT (id) DO UPDATE SET
                    kind = excluded.kind, state = excluded.state, created_at = excluded.created_at,
                    submitted_by = excluded.submitted_by,
                    disk_bytes = COALESCE(?, jobs.disk_bytes),
                    record_mtime_ns = excluded.record_mtime_ns,
                    updated_at = excluded.updated_at
                {newer}
                """,
                (
                    row.id,
                    row.kind,
                    row.state,
                    row.created_at,
                    row.submitted_by,
                    row.disk_bytes,
                    row.record_mtime_ns,
                    row.updated_at,
                    row.disk_bytes,
                ),
            )

    def forget(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def mtimes(self) -> dict[str, int]:
        """Each indexed job's record modification time, as it was when its row was written."""
        with self._connect() as db:
            return dict(db.execute("SELECT id, record_mtime_ns FROM jobs").fetchall())

    def page(
        self, kind: str, *, limit: int, offset: int = 0, order: Literal["oldest", "newest"] = "oldest"
    ) -> tuple[list[str], int]:
        """The ids of one page of ``kind``'s jobs, by submission time, and how many there are in all."""
        direction = "ASC" if order == "oldest" else "DESC"
        with self._connect() as db:
            ids = [
                job_id
                for (job_id,) in db.execute(
                    f"SELECT id FROM jobs WHERE kind = ? ORDER BY created_at {direction}, id {direction} "
                    "LIMIT ? OFFSET ?",
                    (kind, limit, offset),
                )
            ]
            (total,) = db.execute("SELECT COUNT(*) FROM jobs WHERE kind = ?", (kind,)).fetchone()
        return ids, int(total)

    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs there are of each (kind, state)."""
        with self._connect() as db:
            rows = db.execute("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state").fetchall()
        return {(kind, state): int(count) for kind, state, count in rows}

    def ids_in(self, states: tuple[str, ...]) -> list[str]:
        marks = ", ".join("?" for _ in states)
        with self._connect() as db:
            return [
                job_id for (job_id,) in db.execute(f"SELECT id FROM jobs WHERE state IN ({marks})", states)
            ]

    def queued(self) -> int:
        with self._connect() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()
        return int(count)

    def usage(self, submitted_by: str | None) -> Usage:
        """The jobs of one key that are queued or running, and the bytes all its jobs hold."""
        marks = ", ".join("?" for _ in ACTIVE_STATES)
        with self._connect() as db:
            (active,) = db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE submitted_by IS ? AND state IN ({marks})",
                (submitted_by, *ACTIVE_STATES),
            ).fetchone()
            (disk,) = db.execute(
                "SELECT COALESCE(SUM(disk_bytes), 0) FROM jobs WHERE submitted_by IS ?", (submitted_by,)
            ).fetchone()
        return Usage(int(active), int(disk))
