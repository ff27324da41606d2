"""``trashcam db import``: a var dir that a version before the database wrote comes into the database
whole, once, and stays on disk as it was."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.importing import import_var_dir
from core.jobs import JOB_FORMAT, JobStore, NewerRecordError
from core.model_manager import model_store
from core.settings import Settings
from models.checkpoint import load_checkpoint
from tests.app.conftest import tiny_checkpoint
from tests.core.conftest import training_params

OLD_JOB = "0123456789abcdef0123456789abcdef"
CANCELLED_JOB = "1" * 32
NEWER_JOB = "2" * 32
BROKEN_JOB = "3" * 32


def write_record(settings: Settings, job_id: str, record: dict[str, Any] | str) -> Path:
    folder = settings.jobs_dir / job_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(record if isinstance(record, str) else json.dumps(record))
    return folder


def old_var_dir(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    """A var dir as the file-based versions left it: job records and markers, two stored versions of a
    model, the default pointer and the promotions (one line cut short by a crash)."""
    record = {"id": OLD_JOB, "format": 2, "params": training_params().model_dump(mode="json")}
    record |= {"state": "succeeded", "created_at": 100.0, "updated_at": 200.0, "submitted_by": "site-a"}
    write_record(settings, OLD_JOB, record)
    (write_record(settings, OLD_JOB, record) / "upload.zip").write_bytes(b"z" * 1000)
    cancelled = {**record, "id": CANCELLED_JOB, "state": "running", "created_at": 101.0}
    (write_record(settings, CANCELLED_JOB, cancelled) / "cancel").write_text("cancel requested\n")
    write_record(
        settings, NEWER_JOB, {**record, "id": NEWER_JOB, "format": JOB_FORMAT + 1, "state": "paused"}
    )
    write_record(settings, BROKEN_JOB, "{not json")
    shas = []
    for number in (1, 2):
        folder = settings.models_dir / "site-a" / f"v{number}"
        folder.mkdir(parents=True)
        checkpoint = tiny_checkpoint(folder / "model.pt", seed=number)
        loaded = load_checkpoint(checkpoint)
        (folder / "spec.json").write_text(
            json.dumps({"spec": loaded.spec.to_dict(), "sha256": loaded.sha256})
        )
        shas.append(loaded.sha256)
    (settings.models_dir / "site-a" / "v3").mkdir()  # a version whose writer died before spec.json
    (settings.models_dir / "default.json").write_text(json.dumps({"name": "site-a", "version": "v2"}))
    lines = [
        {"at": 1.0, "by": "ops", "from": "shipped:builtin", "to": "site-a:v1", "reason": "promote"},
        {"at": 2.0, "by": "ops", "from": "site-a:v1", "to": "site-a:v2", "reason": "promote"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"at": 3.0, "by": nu'
    (settings.models_dir / "promotions.jsonl").write_text(text)
    return {"shas": shas, "files": files_of(settings.var_dir)}


def files_of(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None: a folder), the database's own files left out."""
    return {
        path.relative_to(folder).as_posix(): (path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
        if "trashcam.sqlite3" not in path.name
    }


def test_an_old_var_dir_is_imported_whole_and_left_as_it_was(settings: Settings, tmp_path: Path) -> None:
    before = old_var_dir(settings, tmp_path)
    jobs, store = JobStore.from_settings(settings), model_store(settings)
    report = import_var_dir(settings, jobs, store)
    assert (report.jobs, report.model_versions, report.default, report.promotions) == (3, 2, "site-a:v2", 2)
    assert len(report.unreadable) == 1
    assert BROKEN_JOB in report.unreadable[0]

    old = jobs.get(OLD_JOB)
    assert (old.state, old.submitted_by, old.created_at) == ("succeeded", "site-a", 100.0)
    assert jobs.usage("site-a").disk_bytes >= 1000  # the folder measured on the way in
    assert jobs.get(CANCELLED_JOB).cancel_requested  # its marker became the flag
    with pytest.raises(NewerRecordError):
        jobs.get(NEWER_JOB)  # still the newer version's to read
    assert [job.id for job in jobs.page("training", limit=10)[0]] == [OLD_JOB, CANCELLED_JOB]

    assert [v.version for v in store.versions("site-a")] == ["v1", "v2"]
    assert [v.sha256 for v in store.versions("site-a")] == before["shas"]
    default = store.default()
    assert default is not None
    assert default.ref == "site-a:v2"
    assert [entry["to"] for entry in store.promotions()] == ["site-a:v1", "site-a:v2"]

    # Nothing was removed or changed on disk; the database file is the one thing added.
    assert files_of(settings.var_dir) == before["files"]

    again = import_var_dir(settings, jobs, store)
    assert (again.jobs, again.jobs_present, again.model_versions, again.model_versions_present) == (
        0,
        3,
        0,
        2,
    )
    assert (again.default, again.promotions) == (None, 0)
    assert len(store.promotions()) == 2


def test_a_store_promoted_after_the_import_keeps_its_own_default(settings: Settings, tmp_path: Path) -> None:
    old_var_dir(settings, tmp_path)
    store = model_store(settings)
    import_var_dir(settings, JobStore.from_settings(settings), store)
    store.set_default("site-a", "v1", by="ops", reason="rollback")
    import_var_dir(settings, JobStore.from_settings(settings), store)  # run again by mistake
    default = store.default()
    assert default is not None
    assert default.ref == "site-a:v1"


def test_the_import_command_prints_what_it_did(settings: Settings, tmp_path: Path) -> None:
    old_var_dir(settings, tmp_path)
    env = {"TRASHCAM_VAR_DIR": str(settings.var_dir), "PATH": str(Path(sys.executable).parent)}
    if settings.database_url is not None:
        env["TRASHCAM_DATABASE_URL"] = settings.database_url
    command = [str(Path(sys.executable).parent / "trashcam"), "db", "import"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert "jobs: 3 imported, 0 already in the database" in done.stdout
    assert "model versions: 2 imported" in done.stdout
    assert "default model: site-a:v2" in done.stdout
    assert "not imported (left as it is)" in done.stdout


def test_a_database_that_cannot_be_reached_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = {
        "TRASHCAM_VAR_DIR": str(tmp_path / "var"),
        "TRASHCAM_DATABASE_URL": "postgresql+psycopg://postgres:secret@127.0.0.1:1/nowhere",
        "PATH": str(Path(sys.executable).parent),
    }
    command = [str(Path(sys.executable).parent / "trashcam"), "db", "upgrade"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "trashcam: the database postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere"
    )
    assert "Traceback" not in done.stderr
    assert "secret" not in done.stderr


def test_db_upgrade_says_what_it_did(settings: Settings) -> None:
    env = {"TRASHCAM_VAR_DIR": str(settings.var_dir), "PATH": str(Path(sys.executable).parent)}
    if settings.database_url is not None:
        env["TRASHCAM_DATABASE_URL"] = settings.database_url
    command = [str(Path(sys.executable).parent / "trashcam"), "db", "upgrade"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert first.stdout.strip().endswith("schema migrated from empty to 0001")
    assert again.stdout.strip().endswith("schema up to date (0001)")
