"""The SQL database that API replicas and workers share: its schema comes from the migrations, processes
that start at once migrate it once, and two hosts with no disk in common see the same jobs, leases and
models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from core.database import alembic_config, metadata, open_database
from core.jobs import JobStore
from core.model_store import ModelStore
from core.settings import Settings
from models.store import ModelInUseError
from tests.app.conftest import tiny_checkpoint
from tests.core.conftest import training_params


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
    assert store.get("site-a", "v1").spec.calibration == {"temperature": 1.5}
