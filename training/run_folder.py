"""A training run's folder: the one place that names its files.

Retention deletes files by these names and export copies them, so a file renamed anywhere else would
become silent data loss or silent disk growth; everything that reads or writes a run goes through
:class:`RunFolder`.

    config.json        the run's TrainConfig          manifest.json   the split (see training.split)
    resume.pt          state after the last epoch     history.json    per-epoch metrics (lr: at the
                                                                      epoch's first step)
    environment.json   the hardware and precision of each process that trained it, from its first epoch
    processes.log      the output of the processes, when a job trained it in several
    best.pt, final.pt  models.checkpoint files        loss_curve.png, accuracy_curve.png
    index.npz          best.pt's hashes and embeddings of the training photos (models.similarity)
    ood.npz            best.pt's features of the training photos and its validation scores (models.ood)
    report.json, confusion_matrix.png, risk_coverage.png   test report of best.pt
    data/              the extracted archive, when the data set is one
    replay/            the base's training photos that a fine-tune replays, extracted
"""

from dataclasses import dataclass
from pathlib import Path

from models.ood import OOD_FILE
from models.similarity import INDEX_FILE

CONFIG_FILE, MANIFEST_FILE, RESUME_FILE = "config.json", "manifest.json", "resume.pt"
HISTORY_FILE, BEST_FILE, FINAL_FILE = "history.json", "best.pt", "final.pt"
ENVIRONMENT_FILE = "environment.json"
#: What the processes of a run trained in several wrote (``worker.processes``).
PROCESSES_LOG_FILE = "processes.log"
REPORT_FILE = "report.json"
CONFUSION_FILE, RISK_COVERAGE_FILE = "confusion_matrix.png", "risk_coverage.png"
LOSS_CURVE_FILE, ACCURACY_CURVE_FILE = "loss_curve.png", "accuracy_curve.png"
DATA_DIR = "data"
#: Where a fine-tuning run extracts the base model's training photos that it replays.
REPLAY_DIR = "replay"
#: The files that describe how a run was trained, whichever checkpoint is exported.
RECORD_FILES = (
    CONFIG_FILE,
    MANIFEST_FILE,
    ENVIRONMENT_FILE,
    HISTORY_FILE,
    LOSS_CURVE_FILE,
    ACCURACY_CURVE_FILE,
)
#: The test report, which describes best.pt only.
REPORT_FILES = (REPORT_FILE, CONFUSION_FILE)
#: What a finished run no longer needs once its model is in the store: the extracted photos and the
#: checkpoints (a finished run is not resumed).
SPENT = (DATA_DIR, REPLAY_DIR, RESUME_FILE, BEST_FILE, FINAL_FILE)
#: What is large in a run, as glob patterns: the extracted photos, the checkpoints, the index and bank.
BULKY = (DATA_DIR, REPLAY_DIR, "*.pt", INDEX_FILE, OOD_FILE)


@dataclass(frozen=True)
class RunFolder:
    """The files of the run in ``path``."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def resume(self) -> Path:
        return self.path / RESUME_FILE

    @property
    def history(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def environment(self) -> Path:
        return self.path / ENVIRONMENT_FILE

    @property
    def processes_log(self) -> Path:
        return self.path / PROCESSES_LOG_FILE

    @property
    def best(self) -> Path:
        return self.path / BEST_FILE

    @property
    def final(self) -> Path:
        return self.path / FINAL_FILE

    @property
    def report(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def index(self) -> Path:
        return self.path / INDEX_FILE

    @property
    def feature_bank(self) -> Path:
        return self.path / OOD_FILE

    @property
    def data(self) -> Path:
        return self.path / DATA_DIR

    @property
    def replay(self) -> Path:
        return self.path / REPLAY_DIR

    def checkpoint(self, name: str) -> Path:
        """One of the run's checkpoints by file name (best.pt, final.pt, resume.pt)."""
        return self.path / name

    def holds_run(self) -> bool:
        """Whether a run was started here (its split is saved before its first epoch)."""
        return self.resume.exists() or self.manifest.exists()

    def served_with_best(self) -> list[Path]:
        """What serves beside best.pt and goes into the store with it: the similar-photos index and the
        feature bank, where the run made them."""
        return [path for path in (self.index, self.feature_bank) if path.is_file()]
