"""A job's folder under the jobs directory: the one place that names its files.

    job.json           the job's record, in versions before the database (``trashcam db import``)
    cancel             a marker: cancellation was asked for, in those versions
    upload.zip, ...    an uploaded archive, as uploaded (upload.tar.gz, upload.tgz, ...)
    review-SITE/       a site's reviewed photos, written out for a training job
    run/               a training job's run (training.run_folder)
    inputs/            a heatmap batch's photos; .inputs.*: one being extracted
    result.zip         a heatmap batch's overlays and manifest

Retention deletes files by these names (:data:`BULKY`), so a file renamed anywhere else would become
silent data loss or silent disk growth: everything that reads or writes a job's files goes through
:class:`JobFolder`.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training.archive import ARCHIVE_SUFFIXES
from training.run_folder import BULKY as RUN_BULKY
from training.run_folder import SPENT as RUN_SPENT
from training.run_folder import RunFolder

RECORD_FILE = "job.json"
CANCEL_MARKER = "cancel"
RUN_DIR = "run"
INPUTS_DIR = "inputs"
#: An uploaded archive in a job's folder: ``upload.zip``, ``upload.tar.gz``, ...
UPLOAD_STEM = "upload"
#: A review set written out for a training job: ``review-SITE``.
REVIEW_SET_PREFIX = "review-"
RESULT_ZIP = "result.zip"
#: The batch's answers, inside result.zip beside the overlays and heatmaps.
RESULT_MANIFEST = "manifest.json"
#: What a job folder may hold that is large and not needed once the job has finished, as glob patterns.
BULKY = (
    f"{UPLOAD_STEM}*",
    f"{REVIEW_SET_PREFIX}*",
    INPUTS_DIR,
    f".{INPUTS_DIR}.*",  # what a worker that died while it extracted a batch's archive left
    RESULT_ZIP,
    *(f"{RUN_DIR}/{pattern}" for pattern in RUN_BULKY),
)
#: What a training job no longer needs once it has succeeded (its model is in the store).
SPENT_AFTER_TRAINING = tuple(f"{RUN_DIR}/{name}" for name in RUN_SPENT)


@dataclass(frozen=True)
class JobFolder:
    """The files of the job in ``path``."""

    path: Path

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.path / RUN_DIR)

    @property
    def inputs(self) -> Path:
        return self.path / INPUTS_DIR

    @property
    def result_zip(self) -> Path:
        return self.path / RESULT_ZIP

    def upload(self, suffix: str) -> Path:
        """Where an uploaded archive of the given suffix (``.zip``, ``.tar.gz``...) is kept."""
        return self.path / f"{UPLOAD_STEM}{suffix}"

    def uploads(self) -> list[Path]:
        """The archives uploaded with the job."""
        return [path for suffix in ARCHIVE_SUFFIXES for path in self.path.glob(f"{UPLOAD_STEM}{suffix}")]

    def review_set(self, site: str) -> Path:
        return self.path / f"{REVIEW_SET_PREFIX}{site}"

    def matching(self, patterns: tuple[str, ...]) -> Iterator[Path]:
        return (path for pattern in patterns for path in self.path.glob(pattern))

    def bulky(self) -> list[Path]:
        """What is large in the folder and not needed once the job has finished."""
        return sorted(self.matching(BULKY))
