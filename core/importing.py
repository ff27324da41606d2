"""``trashcam db import``: bring a var dir written before the database into it, once.

Versions before the database kept each job's record in ``jobs/<id>/job.json`` (a cancel as a marker file
beside it) and the model registry's metadata as files of the store (each version's ``spec.json``, the
default pointer ``default.json``, the promotions ``promotions.jsonl``). This copies what the database
lacks into it and removes nothing: run again, it changes nothing; the files stay where they were.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from core import database
from core.job_folder import CANCEL_MARKER, RECORD_FILE
from core.jobs import Job, JobStore, folder_bytes, is_job_id
from core.model_store import ModelStore
from core.settings import Settings
from models.checkpoint import ModelSpec
from models.store import CHECKPOINT_FILE, DEFAULT_FILE, PROMOTIONS_FILE, SPEC_FILE, ModelNotFoundError

logger = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What one import copied, what the database already had, and what could not be read."""

    jobs: int = 0
    jobs_present: int = 0
    model_versions: int = 0
    model_versions_present: int = 0
    default: str | None = None
    promotions: int = 0
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"jobs: {self.jobs} imported, {self.jobs_present} already in the database",
            f"model versions: {self.model_versions} imported, {self.model_versions_present} already there",
            f"default model: {self.default or 'unchanged'}",
            f"promotions: {self.promotions} imported",
        ]
        lines += [f"not imported (left as it is): {item}" for item in self.unreadable]
        return "\n".join(lines)


def import_var_dir(settings: Settings, jobs: JobStore, store: ModelStore) -> ImportReport:
    report = ImportReport()
    _import_jobs(settings.jobs_dir, jobs, report)
    _import_models(store, report)
    return report


def _import_jobs(jobs_dir: Path, jobs: JobStore, report: ImportReport) -> None:
    if not jobs_dir.is_dir():
        return
    table = database.jobs
    for folder in sorted(jobs_dir.iterdir()):
        record = folder / RECORD_FILE
        if not (is_job_id(folder.name) and record.is_file()):
            continue
        text = record.read_text(encoding="utf-8")
        row = record_columns(folder.name, text)
        if row is None:
            report.unreadable.append(f"{record}: not a job record this version can read")
            continue
        row["cancel_requested"] = bool(row["cancel_requested"]) or (folder / CANCEL_MARKER).is_file()
        row["disk_bytes"] = folder_bytes(folder)
        # The record as it was written (a newer version's stays that version's to read).
        statement = (
            jobs.database.insert(table)
            .values(**row, record=text)
            .on_conflict_do_nothing()
            .returning(table.c.id)
        )
        with jobs.database.write() as db:
            imported = db.execute(statement).first() is not None
        if imported:
            report.jobs += 1
        else:
            report.jobs_present += 1


def record_columns(job_id: str, text: str) -> dict[str, Any] | None:
    """The columns of a stored record: read as this version reads records, else (a newer version's
    record) from its JSON as far as it says them."""
    try:
        job = Job.from_stored(text)
        return {
            "id": job_id,
            "kind": job.kind,
            "state": job.state,
            "format": job.format,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "submitted_by": job.submitted_by,
            "cancel_requested": job.cancel_requested,
        }
    except (ValueError, TypeError):
        pass
    try:
        data = json.loads(text)
        params = data["params"]
        return {
            "id": job_id,
            "kind": str(params["kind"]),
            "state": str(data["state"]),
            "format": int(data["format"]),
            "created_at": float(data["created_at"]),
            "updated_at": float(data.get("updated_at", data["created_at"])),
            "submitted_by": data.get("submitted_by"),
            "cancel_requested": bool(data.get("cancel_requested", False)),
        }
    except (ValueError, TypeError, KeyError):
        return None


def _import_models(store: ModelStore, report: ImportReport) -> None:
    root = store.root
    if not root.is_dir():
        return
    for name_folder in sorted(path for path in root.iterdir() if path.is_dir()):
        present = {version.version for version in store.versions(name_folder.name)}
        for folder in sorted(name_folder.iterdir(), key=lambda path: path.name):
            meta_path = folder / SPEC_FILE
            if not (folder.name[:1] == "v" and folder.name[1:].isdigit()):
                continue
            if not (meta_path.is_file() and (folder / CHECKPOINT_FILE).is_file()):
                continue  # a version whose writer stopped before it finished: never a version
            if folder.name in present:
                report.model_versions_present += 1
                continue
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                spec = ModelSpec.from_dict(meta["spec"]).to_dict()
                sha256 = str(meta["sha256"])
            except (ValueError, TypeError, KeyError) as error:
                report.unreadable.append(f"{meta_path}: {error}")
                continue
            store.record(name_folder.name, int(folder.name[1:]), sha256, spec, at=meta_path.stat().st_mtime)
            report.model_versions += 1
    _import_default(store, report)


def _import_default(store: ModelStore, report: ImportReport) -> None:
    table = database.promotions
    with store.database.read() as db:
        has_history = db.execute(select(func.count()).select_from(table)).scalar_one() > 0
    pointer = store.root / DEFAULT_FILE
    if not has_history and pointer.is_file():
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
            chosen = store.get(str(data["name"]), str(data["version"]))
        except (ValueError, TypeError, KeyError, ModelNotFoundError) as error:
            report.unreadable.append(f"{pointer}: {error}")
        else:
            entries = _promotions(store.root / PROMOTIONS_FILE)
            store.import_history(chosen, entries)
            report.default, report.promotions = chosen.ref, len(entries)


def _promotions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short (a crash mid-write): the others still hold
        if isinstance(entry, dict) and isinstance(entry.get("to"), str):
            entries.append(entry)
    return entries
