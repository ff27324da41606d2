"""The review queue: photos the service answered (the unsure ones, or all), kept with what the model
said, for a person to label; what people label becomes a training data set for the site's model.

Records live in one SQLite file under the var dir (durable across restarts of the service and of
Redis; several API processes share it), photos beside it as JPEG files. A label is never overwritten:
a second one is recorded beside the first, and the latest counts.
"""

import hashlib
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from models.files import atomic_open

DATABASE = "review.sqlite3"
#: A site tag: what a backend names a camera or a place by.
SITE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PHOTOS_DIR = "photos"
#: What a person may answer besides a class: look at it later, or it is not waste at all. Neither
#: becomes a training photo.
SKIP = "skip"
NOT_WASTE = "not waste"
NON_CLASS_LABELS = (SKIP, NOT_WASTE)
ReviewPolicy = Literal["off", "unsure", "all"]
REVIEW_POLICIES: tuple[ReviewPolicy, ...] = ("off", "unsure", "all")
ReviewOrder = Literal["oldest", "least_sure"]
#: Items nobody labelled; those whose latest label is ``skip`` (to look at later); those labelled
#: otherwise; or all.
ReviewState = Literal["pending", "skipped", "labelled", "all"]
_LATEST = "(SELECT label FROM labels WHERE item_id = id ORDER BY at DESC, rowid DESC LIMIT 1)"
_STATE_CLAUSES: dict[str, str] = {
    "pending": "NOT EXISTS (SELECT 1 FROM labels WHERE item_id = id)",
    "skipped": f"{_LATEST} = '{SKIP}'",
    "labelled": f"{_LATEST} != '{SKIP}'",
    "all": "1 = 1",
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    site TEXT,
    model TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    classes TEXT NOT NULL,
    predicted TEXT NOT NULL,
    confidence REAL NOT NULL,
    probabilities TEXT NOT NULL,
    energy REAL NOT NULL,
    distance REAL,
    unsure INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    filename TEXT
);
CREATE TABLE IF NOT EXISTS labels (
    item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    by TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_item ON labels(item_id);
CREATE INDEX IF NOT EXISTS items_by_created ON items(created);
"""


class ReviewError(ValueError):
    """A label or a query the queue cannot take; the message says why."""


class ReviewItemNotFoundError(LookupError):
    """No such item: never stored, or pruned."""


class AlreadyLabelledError(ReviewError):
    """The item has a label and the new one did not say it relabels."""


@dataclass(frozen=True)
class ReviewLabel:
    label: str
    by: str
    at: float


@dataclass(frozen=True)
class ReviewItem:
    """One photo with what the model said of it and what people labelled it."""

    id: str
    created: float
    site: str | None
    model: str  # name:version
    model_sha256: str
    classes: tuple[str, ...]
    predicted: str
    confidence: float
    probabilities: dict[str, float]
    energy: float
    distance: float | None
    unsure: bool
    reasons: tuple[str, ...]
    filename: str | None = None
    labels: tuple[ReviewLabel, ...] = field(default_factory=tuple)

    @property
    def label(self) -> str | None:
        """The latest label (None: not labelled yet)."""
        return self.labels[-1].label if self.labels else None

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "label": self.label}


@dataclass(frozen=True)
class NewItem:
    """What the service knows of a photo when it answers."""

    site: str | None
    model: str
    model_sha256: str
    classes: Sequence[str]
    probabilities: Sequence[float]
    energy: float
    distance: float | None
    unsure: bool
    reasons: Sequence[str]
    filename: str | None = None


@dataclass(frozen=True)
class LabelledSet:
    """A review set written out as an image folder (one subfolder per class) and where it came from."""

    folder: Path
    counts: dict[str, int]
    lineage: dict[str, object]


class ReviewStore:
    """The queue's records and photos under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.photos = folder / PHOTOS_DIR
        self.photos.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per call: they are cheap, and a connection may not cross threads.
        db = sqlite3.connect(self.folder / DATABASE, timeout=30)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            with db:
                yield db
        finally:
            db.close()

    def photo_path(self, item_id: str) -> Path:
        return self.photos / f"{item_id}.jpg"

    def add(self, photo_jpeg: bytes, new: NewItem, *, now: float | None = None) -> ReviewItem:
        """Store a photo (JPEG bytes) and what the model said of it."""
        if len(new.probabilities) != len(new.classes):
            raise ValueError("one probability per class")
        item_id = uuid.uuid4().hex
        # The photo first: a record never points at a photo that is not there.
        with atomic_open(self.photo_path(item_id)) as handle:
            handle.write(photo_jpeg)
        probabilities = dict(zip(new.classes, (float(p) for p in new.probabilities), strict=True))
        predicted = max(probabilities, key=lambda name: probabilities[name])
        created = time.time() if now is None else now
        with self._connect() as db:
            db.execute(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    created,
                    new.site,
                    new.model,
                    new.model_sha256,
                    json.dumps(list(new.classes)),
                    predicted,
                    probabilities[predicted],
                    json.dumps(probabilities),
                    new.energy,
                    new.distance,
                    int(new.unsure),
                    json.dumps(list(new.reasons)),
                    new.filename,
                ),
            )
        return self.get(item_id)

    def get(self, item_id: str) -> ReviewItem:
        with self._connect() as db:
            row = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise ReviewItemNotFoundError(f"no review item {item_id!r} (never stored, or pruned)")
            labels = db.execute(
                "SELECT label, by, at FROM labels WHERE item_id = ? ORDER BY at, rowid", (item_id,)
            ).fetchall()
        return _item(row, labels)

    def find(
        self,
        *,
        state: ReviewState = "pending",
        site: str | None = None,
        reason: str | None = None,
        model: str | None = None,
        order: ReviewOrder = "oldest",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[ReviewItem], int]:
        """Items in ``state`` that match the filters, oldest or least sure first, one page of them; and
        how many match in all."""
        where, params = [_STATE_CLAUSES[state]], list[object]()
        for column, value in (("site", site), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if reason is not None:
            # Reasons are stored as a JSON list of known strings; match the quoted string.
            where.append("instr(reasons, ?) > 0")
            params.append(json.dumps(reason))
        sort = "created, id" if order == "oldest" else "confidence, created, id"
        clause = " AND ".join(where)
        with self._connect() as db:
            total = db.execute(f"SELECT count(*) FROM items WHERE {clause}", params).fetchone()[0]
            rows = db.execute(
                f"SELECT * FROM items WHERE {clause} ORDER BY {sort} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            # The page's labels in one query, not one per item.
            labels: dict[str, list[tuple[str, str, float]]] = {row[0]: [] for row in rows}
            marks = ", ".join("?" * len(rows))
            for item_id, label, by, at in db.execute(
                f"SELECT item_id, label, by, at FROM labels WHERE item_id IN ({marks}) ORDER BY at, rowid",
                list(labels),
            ):
                labels[item_id].append((label, by, at))
        return [_item(row, labels[row[0]]) for row in rows], int(total)

    def label(
        self, item_id: str, label: str, *, by: str, relabel: bool = False, now: float | None = None
    ) -> ReviewItem:
        """Record ``by``'s ``label`` (a class of the item's model, ``skip`` or ``not waste``). An item
        that has a label takes another only with ``relabel``; the first stays on record."""
        item = self.get(item_id)
        allowed = (*item.classes, *NON_CLASS_LABELS)
        if label not in allowed:
            raise ReviewError(f"label {label!r} is not one of {', '.join(allowed)}")
        db = sqlite3.connect(self.folder / DATABASE, timeout=30, isolation_level=None)
        try:
            # Check and record in one write transaction: of two people labelling at once (in any API
            # process), the second sees the first's label.
            db.execute("BEGIN IMMEDIATE")
            latest = db.execute(
                "SELECT label, by FROM labels WHERE item_id = ? ORDER BY at DESC, rowid DESC LIMIT 1",
                (item_id,),
            ).fetchone()
            # Skipped means "later": the next label needs no relabel.
            if latest is not None and latest[0] != SKIP and not relabel:
                db.execute("ROLLBACK")
                raise AlreadyLabelledError(
                    f"item {item_id} is already labelled {latest[0]!r} by {latest[1]}; "
                    "send relabel=true to record another label beside it"
                )
            if db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                db.execute("ROLLBACK")
                raise ReviewItemNotFoundError(f"no review item {item_id!r} (never stored, or pruned)")
            db.execute(
                "INSERT INTO labels VALUES (?, ?, ?, ?)",
                (item_id, label, by, time.time() if now is None else now),
            )
            db.execute("COMMIT")
        finally:
            db.close()
        return self.get(item_id)

    def prune(self, older_than_seconds: float, *, now: float | None = None) -> int:
        """Delete the items (and their photos and labels) stored longer ago than that; how many."""
        cutoff = (time.time() if now is None else now) - older_than_seconds
        with self._connect() as db:
            ids = [row[0] for row in db.execute("SELECT id FROM items WHERE created < ?", (cutoff,))]
            db.executemany("DELETE FROM items WHERE id = ?", [(item_id,) for item_id in ids])
        for item_id in ids:
            self.photo_path(item_id).unlink(missing_ok=True)
        return len(ids)

    def sites(self) -> list[str]:
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT DISTINCT site FROM items WHERE site IS NOT NULL")]

    def export(self, site: str | None, out: Path) -> LabelledSet:
        """Write every item of ``site`` (None: those without a site) whose latest label is a class into
        ``out/<class>/<id>.jpg``. Raises :class:`ReviewError` when that leaves no photo or one class."""
        items, _ = self.find(state="labelled", site=site, limit=1_000_000)
        if site is None:
            items = [item for item in items if item.site is None]
        chosen = [item for item in items if item.label not in NON_CLASS_LABELS]
        where = f"site {site!r}" if site is not None else "photos without a site"
        if not chosen:
            raise ReviewError(f"the review set of {where} has no photo labelled with a class")
        counts: dict[str, int] = {}
        for item in chosen:
            assert item.label is not None
            counts[item.label] = counts.get(item.label, 0) + 1
        if len(counts) < 2:
            raise ReviewError(
                f"the review set of {where} has photos of one class only ({next(iter(counts))}): "
                "a model needs at least two to learn to tell them apart"
            )
        for item in chosen:
            assert item.label is not None
            (out / item.label).mkdir(parents=True, exist_ok=True)
            (out / item.label / f"{item.id}.jpg").write_bytes(self.photo_path(item.id).read_bytes())
        lineage: dict[str, object] = {
            "site": site,
            "labels": len(chosen),
            "per_class": dict(sorted(counts.items())),
            "by": sorted({item.labels[-1].by for item in chosen}),
            "up_to": max(item.labels[-1].at for item in chosen),
            "items_digest": _digest(sorted(f"{item.id}:{item.label}" for item in chosen)),
        }
        return LabelledSet(out, counts, lineage)


def _digest(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _item(row: tuple[object, ...], labels: Sequence[tuple[str, str, float]]) -> ReviewItem:
    (
        item_id,
        created,
        site,
        model,
        sha256,
        classes,
        predicted,
        confidence,
        probabilities,
        energy,
        distance,
        unsure,
        reasons,
        filename,
    ) = row
    return ReviewItem(
        id=str(item_id),
        created=float(created),  # type: ignore[arg-type]
        site=None if site is None else str(site),
        model=str(model),
        model_sha256=str(sha256),
        classes=tuple(json.loads(str(classes))),
        predicted=str(predicted),
        confidence=float(confidence),  # type: ignore[arg-type]
        probabilities=json.loads(str(probabilities)),
        energy=float(energy),  # type: ignore[arg-type]
        distance=None if distance is None else float(distance),  # type: ignore[arg-type]
        unsure=bool(unsure),
        reasons=tuple(json.loads(str(reasons))),
        filename=None if filename is None else str(filename),
        labels=tuple(ReviewLabel(str(label), str(by), float(at)) for label, by, at in labels),
    )
