"""The SQL database that API replicas and workers share: its schema comes from the migrations, processes
that start at once migrate it once, and two hosts with no disk in common see the same jobs, leases and
models."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, String, Table, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core.database import alembic_config, metadata, open_database, unavailable, upgrade
from core.jobs import JobStore
from core.model_store import ModelStore
from core.settings import Settings
from models.store import DefaultChangedError, ModelInUseError, ModelNotFoundError
from tests.app.conftest import tiny_checkpoint
from tests.core.conftest import training_params

#: Alembic's own table: the revision the schema is at.
alembic_version = Table("alembic_version", MetaData(), Column("version_num", String(32), primary_key=True))


@pytest.fixture
def url(settings: Settings) -> str:
    return settings.database


def test_the_migrations_make_the_schema_the_code_declares(url: str) -> None:
    database = open_database(url)
    with database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert MigrationContext.configure(connection).get_current_revision() == head


def test_processes_that_start_together_migrate_once(tmp_path: Path, database_url: str | None) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    code = "import sys; from core.database import open_database; open_database(sys.argv[1])"
    started = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE) for _ in range(3)]
    errors = [process.communicate(timeout=120)[1].decode() for process in started]
    assert [process.returncode for process in started] == [0, 0, 0], errors
    with open_database(url).engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


def test_two_hosts_without_a_common_disk_share_jobs_and_leases(settings: Settings, tmp_path: Path) -> None:
    host_a = JobStore.from_url(settings.redis_url, tmp_path / "a" / "jobs", settings.database)
    host_b = JobStore.from_url(settings.redis_url, tmp_path / "b" / "jobs", settings.database)
    job = host_a.create(training_params(), submitted_by="site-a")
    assert host_b.get(job.id).submitted_by == "site-a"
    lease = host_a.lease(job.id, 30)
    assert lease.acquire()
    host_a.redis.flushdb()  # a Redis restart: the lock is gone; the heartbeat row says who holds the job
    assert not host_b.lease(job.id, 30).acquire()
    beat = host_b.heartbeat(job.id)
    assert beat is not None
    assert (beat.holder, beat.fresh) == (lease.holder, True)
    assert host_b.request_cancel(job.id).cancel_requested
    assert host_a.get(job.id).cancel_requested
    lease.release()
    assert host_b.heartbeat(job.id) is None


def test_the_registry_on_either_database(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", settings.database)
    first = store.add("site-a", tiny_checkpoint(tmp_path / "1.pt", seed=1))
    second = store.add("site-a", tiny_checkpoint(tmp_path / "2.pt", seed=2))
    assert store.add("site-a", tiny_checkpoint(tmp_path / "again.pt", seed=2)) == second  # same weights
    assert [v.version for v in store.versions("site-a")] == ["v1", "v2"]
    store.set_default("site-a", "v2", by="ops")
    with pytest.raises(ModelInUseError, match="is the default"):
        store.delete("site-a", "v2")
    store.set_default("site-a", "v1", by="ops", reason="rollback")
    assert [(p["from"], p["to"], p["reason"]) for p in store.promotions()] == [
        (None, "site-a:v2", "promote"),
        ("site-a:v2", "site-a:v1", "rollback"),
    ]
    assert store.delete("site-a", "v2").ref == "site-a:v2"
    assert not second.path.parent.exists()
    assert [v.version for v in store.versions("site-a")] == ["v1"]
    # Another replica, with its own store object, sees the same registry.
    other = ModelStore(tmp_path / "models", settings.database)
    default = other.default()
    assert default is not None
    assert (default.ref, default.sha256) == ("site-a:v1", first.sha256)


def test_a_spec_rewritten_in_place_is_what_the_registry_shows(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", settings.database)
    version = store.add("site-a", tiny_checkpoint(tmp_path / "1.pt"))
    spec_file = version.path.with_name("spec.json")
    meta = json.loads(spec_file.read_text())
    meta["spec"]["calibration"] = {"temperature": 1.5}
    spec_file.write_text(json.dumps(meta))  # as `trashcam-train calibrate` on the stored checkpoint
    stat = spec_file.stat()  # a later time, on any file system's clock
    os.utime(spec_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert store.get("site-a", "v1").spec.calibration == {"temperature": 1.5}


def test_a_schema_a_newer_version_migrated_is_left_as_it_is(url: str) -> None:
    database = open_database(url)
    with database.write() as db:
        db.execute(update(alembic_version).values(version_num="9999_newer"))
    upgrade(database)  # a rolling deploy's older replica, starting again: no error, nothing changed
    with database.read() as db:
        assert db.execute(select(alembic_version.c.version_num)).scalar_one() == "9999_newer"
    assert database.schema == "9999_newer, newer than this version's: left as it is"


def test_what_counts_as_the_database_being_away() -> None:
    assert unavailable(OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert unavailable(PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    assert not unavailable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    # SQLite: a lock held too long is the database busy; a table it lacks is a schema it does not know.
    assert unavailable(OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")))
    assert not unavailable(OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: jobs")))
    assert not unavailable(ValueError("not a database error"))


def test_a_rollback_undoes_the_promotion_it_read_or_none(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", settings.database)
    for seed in (1, 2, 3):
        store.add("site-a", tiny_checkpoint(tmp_path / f"{seed}.pt", seed=seed))
    store.set_default("site-a", "v1")
    store.set_default("site-a", "v2")
    read = store.promotions()[-1]["id"]
    store.set_default("site-a", "v3")  # another replica promoted meanwhile
    with pytest.raises(DefaultChangedError):
        store.set_default("site-a", "v1", reason="rollback of site-a:v2", after=read)
    default = store.default()
    assert default is not None
    assert default.ref == "site-a:v3"
    long_name = "a" * 64  # the longest name: a rollback's reason names it, and its version
    store.add(long_name, tiny_checkpoint(tmp_path / "long.pt", seed=9))
    store.set_default(long_name, "v1")
    store.set_default(
        "site-a", "v3", reason=f"rollback of {long_name}:v1", after=store.promotions()[-1]["id"]
    )
    assert store.promotions()[-1]["reason"] == f"rollback of {long_name}:v1"


def test_a_version_deleted_while_it_was_being_promoted_is_not_made_the_default(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "models", settings.database)
    store.add("site-a", tiny_checkpoint(tmp_path / "1.pt", seed=1))
    doomed = store.add("site-a", tiny_checkpoint(tmp_path / "2.pt", seed=2))
    store.set_default("site-a", "v1")
    other = ModelStore(tmp_path / "models", settings.database)  # another replica
    found = store.get("site-a", "v2")
    monkeypatch.setattr(store, "get", lambda *_, **__: found)  # read before the other's delete landed
    other.delete("site-a", "v2")
    with pytest.raises(ModelNotFoundError, match="deleted meanwhile"):
        store.set_default("site-a", "v2")
    default = other.default()
    assert default is not None
    assert default.ref == "site-a:v1"
    assert not doomed.path.exists()


def test_a_deleted_versions_number_never_names_other_weights(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", settings.database)
    store.add("site-a", tiny_checkpoint(tmp_path / "1.pt", seed=1))
    store.add("site-a", tiny_checkpoint(tmp_path / "2.pt", seed=2))
    store.set_default("site-a", "v2")
    store.set_default("site-a", "v1")
    store.delete("site-a", "v2")
    assert store.add("site-a", tiny_checkpoint(tmp_path / "3.pt", seed=3)).version == "v3"
    assert [v.version for v in store.versions("site-a")] == ["v1", "v3"]
    with pytest.raises(ModelNotFoundError):  # what a rollback of the last promotion would go back to
        store.set_default("site-a", "v2", reason="rollback of site-a:v1")


def test_a_new_version_never_takes_a_number_the_database_has(settings: Settings, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", settings.database)
    first = store.add("site-a", tiny_checkpoint(tmp_path / "1.pt", seed=1))
    shutil.rmtree(first.path.parent)  # its files lost (restored from an older backup), its row kept
    assert store.add("site-a", tiny_checkpoint(tmp_path / "2.pt", seed=2)).version == "v2"


def test_a_cancel_never_overwrites_a_job_a_worker_took_meanwhile(
    jobs: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = jobs.create(training_params())
    taken = jobs.get(job.id)

    def locked_meanwhile(job_id: str) -> bool:
        taken.state = "running"  # a worker took it between the cancel's read and its write
        jobs.save(taken)
        return False  # and its lock is not seen

    monkeypatch.setattr(jobs, "locked", locked_meanwhile)
    answered = jobs.request_cancel(job.id)
    assert (answered.state, answered.cancel_requested) == ("running", True)
    assert jobs.get(job.id).state == "running"  # its worker hears the flag and cancels it
