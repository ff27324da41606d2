"""The model registry: each version's files under ``<root>/<name>/v<N>/`` (on the artifact root, which
every host mounts), and its record, the default pointer and the promotions in the SQL database
(:mod:`core.database`), which every API replica and worker shares.

A version's number is claimed with an atomic ``mkdir``, so two writers never receive the same one, and
its files are written to a temporary name and renamed; its row is written last, so a reader never sees
half a model. A version's ``spec.json`` may be rewritten in place (``trashcam-train calibrate`` on a
stored checkpoint): the row follows the file, by its modification time, when it is next read.

The model that ships with the service is a read-only version of the store too, ``NAME:builtin``, so
that it can be listed, compared, served again after another was promoted, and never deleted. Every
change of the default is recorded (when, by whom, from what, to what), which is what a rollback reads.
"""

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from core import database
from core.database import REGISTRY_LOCK, open_database
from models.checkpoint import ModelSpec, load_checkpoint
from models.files import atomic_open, write_json
from models.store import (
    BUILTIN_VERSION,
    CHECKPOINT_FILE,
    NAME_PATTERN,
    REPORT_FILE,
    SPEC_FILE,
    VERSION_PATTERN,
    DefaultChangedError,
    ModelInUseError,
    ModelNotFoundError,
    ModelVersion,
    builtin_name,
    read_builtin,
    validate_name,
)


class ModelStore:
    """Versioned checkpoints under ``root``, recorded in the database at ``database_url``, and the
    read-only ``builtin`` checkpoint when given."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        database_url: str,
        *,
        builtin: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.database = open_database(database_url)
        self.builtin_path = None if builtin is None else Path(builtin)

    # Reading ---------------------------------------------------------------------------------
    def builtin(self) -> ModelVersion | None:
        """The shipped model as a version (``NAME:builtin``), or None when there is none."""
        path = self.builtin_path
        if path is None or not path.is_file() or not NAME_PATTERN.fullmatch(builtin_name(path)):
            return None
        stat = path.stat()
        return read_builtin(str(path), stat.st_size, stat.st_mtime_ns)

    def names(self) -> list[str]:
        table = database.model_versions
        with self.database.read() as db:
            stored = set(
                db.execute(select(table.c.name).where(table.c.deleted_at.is_(None)).distinct()).scalars()
            )
        builtin = self.builtin()
        return sorted(stored | ({builtin.name} if builtin is not None else set()))

    def versions(self, name: str) -> list[ModelVersion]:
        """The versions of ``name``, oldest first (the built-in one before any stored one)."""
        builtin = self.builtin()
        shipped = [builtin] if builtin is not None and builtin.name == name else []
        table = database.model_versions
        with self.database.read() as db:
            rows = db.execute(
                select(table.c.number, table.c.sha256, table.c.spec, table.c.spec_mtime_ns)
                .where(table.c.name == name, table.c.deleted_at.is_(None))
                .order_by(table.c.number)
            ).all()
        stored = []
        for row in rows:
            folder = self.root / name / f"v{row.number}"
            sha256, spec = row.sha256, json.loads(row.spec)
            mtime_ns = _mtime_ns(folder / SPEC_FILE)
            if mtime_ns not in (None, row.spec_mtime_ns):  # rewritten in place since: the file is newer
                sha256, spec = self._follow_file(name, row.number, folder / SPEC_FILE)
            stored.append(
                ModelVersion(name, folder.name, folder / CHECKPOINT_FILE, ModelSpec.from_dict(spec), sha256)
            )
        return [*shipped, *stored]

    def _follow_file(self, name: str, number: int, path: Path) -> tuple[str, dict[str, Any]]:
        mtime_ns = _mtime_ns(path) or 0
        meta = json.loads(path.read_text(encoding="utf-8"))
        sha256, spec = str(meta["sha256"]), dict(meta["spec"])
        table = database.model_versions
        with self.database.write() as db:
            db.execute(
                update(table)
                .where(table.c.name == name, table.c.number == number)
                .values(sha256=sha256, spec=json.dumps(spec), spec_mtime_ns=mtime_ns)
            )
        return sha256, spec

    def all_versions(self) -> list[ModelVersion]:
        return [version for name in self.names() for version in self.versions(name)]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A version of ``name``: the given one, or the newest."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r}; known: {', '.join(self.names()) or 'none'}")
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        known = ", ".join(v.version for v in versions)
        raise ModelNotFoundError(f"model {name!r} has no version {version!r}; known: {known}")

    def default(self) -> ModelVersion | None:
        table = database.default_model
        with self.database.read() as db:
            row = db.execute(select(table.c.name, table.c.version).where(table.c.slot == 1)).first()
        if row is None:
            return None
        try:
            return self.get(row.name, row.version)
        except ModelNotFoundError:
            return None

    # Writing ---------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        checkpoint: str | os.PathLike[str],
        *,
        report: dict[str, Any] | None = None,
        extra: Sequence[Path] = (),
    ) -> ModelVersion:
        """Copy a verified checkpoint in as the next version of ``name``, with ``extra`` files that
        describe it (its fingerprint index)."""
        validate_name(name)
        loaded = load_checkpoint(checkpoint)  # refuse a bad file before it enters the store
        for existing in self.versions(name):
            if existing.sha256 == loaded.sha256:
                return existing  # the same weights again (a job run twice): nothing new to store
        folder = self._claim_version(name)
        with open(checkpoint, "rb") as source, atomic_open(folder / CHECKPOINT_FILE) as target:
            shutil.copyfileobj(source, target)
        if report is not None:
            write_json(folder / REPORT_FILE, report)
        for path in extra:
            with open(path, "rb") as source, atomic_open(folder / path.name) as target:
                shutil.copyfileobj(source, target)
        meta = {"spec": loaded.spec.to_dict(), "sha256": loaded.sha256}
        write_json(folder / SPEC_FILE, meta)
        # The row last: until it is written, no reader knows the version.
        self.record(name, int(folder.name[1:]), loaded.sha256, loaded.spec.to_dict())
        return self.get(name, folder.name)

    def record(
        self, name: str, number: int, sha256: str, spec: dict[str, Any], *, at: float | None = None
    ) -> None:
        """Write the row of version ``v<number>`` of ``name``, whose files are in place."""
        with self.database.write() as db:
            db.execute(
                insert(database.model_versions).values(
                    name=name,
                    number=number,
                    sha256=sha256,
                    spec=json.dumps(spec),
                    spec_mtime_ns=_mtime_ns(self.root / name / f"v{number}" / SPEC_FILE) or 0,
                    created_at=time.time() if at is None else at,
                )
            )

    def set_default(
        self,
        name: str,
        version: str | None = None,
        *,
        by: str | None = None,
        reason: str = "promote",
        after: int | None = None,
    ) -> ModelVersion:
        """Make a version the default and record the promotion: ``by`` whom (an API key's name),
        ``reason``, and what it replaces (the default before, else the built-in model). ``after``: the
        id of the promotion this one must follow (a rollback's), :class:`DefaultChangedError` when
        another landed first."""
        chosen = self.get(name, version)
        builtin = self.builtin()  # read before the lock: it may read the shipped checkpoint
        versions, pointer, history = database.model_versions, database.default_model, database.promotions
        statement = self.database.insert(pointer).values(slot=1, name=chosen.name, version=chosen.version)
        statement = statement.on_conflict_do_update(
            index_elements=[pointer.c.slot],
            set_={"name": statement.excluded.name, "version": statement.excluded.version},
        )
        # One registry change at a time, every replica: what is checked here still holds at the commit.
        with self.database.write() as db:
            self.database.serialize(db, REGISTRY_LOCK)
            if (
                chosen.version != BUILTIN_VERSION
                and not db.execute(
                    select(versions.c.number).where(
                        versions.c.name == chosen.name,
                        versions.c.number == int(chosen.version[1:]),
                        versions.c.deleted_at.is_(None),
                    )
                ).first()
            ):
                raise ModelNotFoundError(f"{chosen.ref} was deleted meanwhile")
            last = db.execute(select(func.max(history.c.id))).scalar()
            if after is not None and last != after:
                raise DefaultChangedError("the default was changed meanwhile: look again, then try again")
            current = db.execute(select(pointer.c.name, pointer.c.version).where(pointer.c.slot == 1)).first()
            previous = (
                f"{current.name}:{current.version}"
                if current is not None
                else (builtin.ref if builtin is not None else None)
            )
            db.execute(statement)
            db.execute(
                insert(history).values(
                    at=time.time(), by=by, from_ref=previous, to_ref=chosen.ref, reason=reason
                )
            )
        return chosen

    def import_history(self, chosen: ModelVersion, entries: Sequence[dict[str, Any]]) -> None:
        """Set the default to ``chosen`` with the promotions that led to it, as a store before the
        database recorded them (``trashcam db import``)."""
        pointer = database.default_model
        with self.database.write() as db:
            db.execute(delete(pointer))
            db.execute(insert(pointer).values(slot=1, name=chosen.name, version=chosen.version))
            for entry in entries:
                db.execute(
                    insert(database.promotions).values(
                        at=float(entry.get("at") or 0.0),
                        by=entry.get("by"),
                        from_ref=entry.get("from"),
                        to_ref=str(entry["to"]),
                        reason=str(entry.get("reason") or "promote"),
                    )
                )

    def promotions(self) -> list[dict[str, Any]]:
        """Every change of the default, oldest first."""
        table = database.promotions
        with self.database.read() as db:
            rows = db.execute(select(table).order_by(table.c.id)).all()
        return [
            {
                "id": row.id,
                "at": row.at,
                "by": row.by,
                "from": row.from_ref,
                "to": row.to_ref,
                "reason": row.reason,
            }
            for row in rows
        ]

    def delete(self, name: str, version: str) -> ModelVersion:
        """Remove a stored version. The built-in model and the default cannot be removed
        (:class:`ModelInUseError`); an unknown one is :class:`ModelNotFoundError`."""
        chosen = self.get(name, version)
        if chosen.version == BUILTIN_VERSION:
            raise ModelInUseError(f"{chosen.ref} ships with the service and cannot be deleted")
        table, pointer = database.model_versions, database.default_model
        with self.database.write() as db:
            # Checked in the transaction that deletes, under the registry's lock: a promotion cannot slip
            # in between.
            self.database.serialize(db, REGISTRY_LOCK)
            current = db.execute(select(pointer.c.name, pointer.c.version).where(pointer.c.slot == 1)).first()
            if current is not None and (current.name, current.version) == (chosen.name, chosen.version):
                raise ModelInUseError(f"{chosen.ref} is the default model: promote another one first")
            db.execute(
                update(table)
                .where(table.c.name == chosen.name, table.c.number == int(chosen.version[1:]))
                .values(deleted_at=time.time())
            )
        # Renamed out of the way in one step, then removed; its row keeps its number from other weights.
        hidden = chosen.path.parent.with_name(f".deleted-{chosen.version}-{uuid.uuid4().hex[:8]}")
        chosen.path.parent.rename(hidden)
        shutil.rmtree(hidden, ignore_errors=True)
        return chosen

    def _claim_version(self, name: str) -> Path:
        """A new version's folder: a number no folder and no row has (a row may outlive its folder, say
        when the database and the files were restored from different backups)."""
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in parent.iterdir() if (m := VERSION_PATTERN.fullmatch(p.name))]
        table = database.model_versions
        with self.database.read() as db:
            recorded = db.execute(select(func.max(table.c.number)).where(table.c.name == name)).scalar()
        number = max([*numbers, recorded or 0]) + 1
        while True:
            folder = parent / f"v{number}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                number += 1


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
