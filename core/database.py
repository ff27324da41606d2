"""The service's SQL database: job records, the heartbeats of the workers holding jobs, and the model
registry's metadata, shared by every API replica and worker (SQLAlchemy 2, Alembic migrations).

``TRASHCAM_DATABASE_URL`` names it. The embedded default is SQLite in the var dir, for one host;
PostgreSQL (``postgresql+psycopg://...``) serves several. Every process brings the schema up to date on
its first use of a database, one process at a time, so the two commands that set the service up stay two.
"""

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    false,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import NullPool

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
#: Keys of PostgreSQL's advisory locks that every process agrees on: migrating the schema, and changing
#: the model registry (its default pointer and versions).
_MIGRATION_LOCK = 0x7472617368  # "trash"
REGISTRY_LOCK = 0x7472617369

metadata = MetaData()

#: One row a job: the record (``core.jobs.Job`` as JSON) and what is asked of many jobs at once.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    #: The record's layout (``core.jobs.JOB_FORMAT``): no version rewrites a newer one's row.
    Column("format", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("submitted_by", String(200)),
    #: The job folder's size when last measured (submitted, finished, pruned), in bytes.
    Column("disk_bytes", BigInteger, nullable=False, server_default="0"),
    #: Set only by a cancel, never by a record's save, so a worker saving progress cannot undo one.
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("record", Text, nullable=False),
    Index("jobs_by_kind", "kind", "created_at", "id"),
    Index("jobs_by_key", "submitted_by", "state"),
    Index("jobs_by_state", "state"),
)

#: Which worker holds a job, renewed every third of ``ttl`` while it works on it (``core.jobs.JobLease``).
job_heartbeats = Table(
    "job_heartbeats",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("holder", String(32), nullable=False),
    Column("ttl", Float, nullable=False),
    #: The writer's clock (``time.time()``): the hosts' clocks are assumed kept in step (NTP).
    Column("beat_at", Float, nullable=False),
)

#: A stored model version; its files are under the artifact root (``models.store``).
model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("spec", Text, nullable=False),
    #: The modification time of the version's ``spec.json`` that ``sha256`` and ``spec`` were read from.
    Column("spec_mtime_ns", BigInteger, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    #: When it was deleted: the row stays, so that its number is never given to other weights (a
    #: promotion on record that names it must not come to mean them).
    Column("deleted_at", Float),
)

#: The version that serves by default: at most one row, ``slot`` 1.
default_model = Table(
    "default_model",
    metadata,
    Column("slot", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("version", String(16), nullable=False),
)

#: Every change of the default, which a rollback reads.
promotions = Table(
    "promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("by", String(200)),
    Column("from_ref", String(96)),
    Column("to_ref", String(96), nullable=False),
    Column("reason", Text, nullable=False),
)


class Database:
    """An engine on one database whose schema is up to date, with the two kinds of connection the
    stores use: :meth:`read` and :meth:`write`."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # pool_pre_ping: a connection that a restarted PostgreSQL dropped is replaced before it is used.
        options: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "postgresql":
            # A server that stops answering (a host gone, a half-open connection) is found out in seconds:
            # a connection not opened in 5 s, data unacknowledged for 15 s (tcp_user_timeout) or an idle
            # connection unanswered for 25 s (keepalives) fails; a lock waited for 10 s fails; and a
            # request waits at most pool_timeout for a connection. 503 then, not a hung thread.
            options["connect_args"] = {
                "connect_timeout": 5,
                "tcp_user_timeout": 15000,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "options": "-c lock_timeout=10000",
            }
            options["pool_timeout"] = 10
        if self.is_sqlite:
            # A file opens in microseconds: no pool, so no descriptors held between uses and none
            # carried across a fork.
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
            options["poolclass"] = NullPool
        self.engine: Engine = create_engine(url, **options)
        #: What opening it did to the schema, for people: migrated, up to date, or newer than this version's.
        self.schema = ""
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        upgrade(self)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction, committed at the end. On SQLite it takes the write lock at once: a transaction
        that read first and wrote later could otherwise fail at once, instead of waiting, when another
        process wrote in between."""
        with self.engine.begin() as connection:
            if self.is_sqlite:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield connection

    def serialize(self, connection: Connection, key: int) -> None:
        """Take lock ``key`` until the end of ``connection``'s transaction (one of :meth:`write`): on
        PostgreSQL an advisory lock; SQLite's write transaction is already the only one."""
        if not self.is_sqlite:
            connection.execute(select(func.pg_advisory_xact_lock(key)))

    def insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        """``INSERT`` with ``ON CONFLICT`` (an upsert), in the database's own dialect."""
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    # WAL lets readers go on while one process writes; the file keeps it. NORMAL syncs at checkpoints,
    # which WAL keeps consistent after a crash.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(database: Database) -> None:
    """Bring the schema to this version's newest migration; processes that start together take turns.
    A schema that a newer version already migrated is left as it is: migrations only add (columns with
    defaults, tables), so an older version still reads and writes it during a rolling deploy."""
    with _migration_lock(database) as connection:
        config = alembic_config(connection)
        known = {revision.revision for revision in ScriptDirectory.from_config(config).walk_revisions()}
        current = MigrationContext.configure(connection).get_current_heads()
        newer = [head for head in current if head not in known]
        if newer:
            logger.info("the database's schema is %s, newer than this version's: left as it is", newer)
            database.schema = f"{', '.join(newer)}, newer than this version's: left as it is"
            return
        command.upgrade(config, "head")
        connection.commit()
        after = MigrationContext.configure(connection).get_current_heads()
        before = ", ".join(current) or "empty"
        database.schema = (
            f"up to date ({', '.join(after)})"
            if after == current
            else f"migrated from {before} to {', '.join(after)}"
        )


@contextlib.contextmanager
def _migration_lock(database: Database) -> Iterator[Connection]:
    if not database.is_sqlite:
        with database.engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
            try:
                yield connection
            finally:
                connection.rollback()
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
        return
    path = make_url(database.url).database
    lock_path = Path(f"{path}.migrating") if path and path != ":memory:" else None
    with contextlib.ExitStack() as stack:
        if lock_path is not None:
            lock = stack.enter_context(open(lock_path, "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield stack.enter_context(database.engine.connect())


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def open_database(url: str) -> Database:
    """The process's one :class:`Database` for ``url`` (made, and migrated, on first use)."""
    with _databases_lock:
        if url not in _databases:
            _databases[url] = Database(url)
        return _databases[url]


def dispose_database(url: str) -> None:
    """Close the process's connections to ``url`` and forget it (a database about to be dropped)."""
    with _databases_lock:
        database = _databases.pop(url, None)
    if database is not None:
        database.dispose()


def _after_fork() -> None:
    # A forked child (a Celery pool process) must not use its parent's pooled connections: it opens its own.
    for database in _databases.values():
        database.engine.dispose(close=False)


def redact_password(url: str) -> str:
    """``url`` as it may be shown: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached or cannot answer now (down, restarting,
    every pooled connection taken, a lock it waited too long for), not a bad query."""
    if isinstance(error, PoolTimeoutError):  # no pooled connection came free in time
        return True
    if not isinstance(error, DBAPIError):
        return False
    if isinstance(error.orig, sqlite3.Error):
        # SQLite's OperationalError also means a schema this version does not know ("no such table"):
        # only a lock held too long, or a file that cannot be opened, is the database away.
        message = str(error.orig)
        return "locked" in message or "unable to open" in message or "disk I/O" in message
    return error.connection_invalidated or isinstance(error, OperationalError | InterfaceError)


os.register_at_fork(after_in_child=_after_fork)
