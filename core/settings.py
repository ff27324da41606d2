"""The service's settings: one typed object, read from ``TRASHCAM_*`` environment variables (or .env).

Nothing else in the project reads the environment.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.calibration import Thresholds
from models.runtime import Backend
from models.store import CHECKPOINT_FILE

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The model that ships with the project, as ``training.export`` writes it: weights, spec, run record.
SHIPPED_MODEL_DIR = PROJECT_ROOT / "weights" / "se_resnet50"

#: What a key may do, each role including the ones before it: ``read`` classifies, explains and lists;
#: ``train`` also starts and cancels jobs; ``admin`` also promotes, rolls back and deletes models.
Role = Literal["read", "review", "train", "admin"]
#: Each role may do what the ones before it may: read (classify, explain, similar), review (label the
#: review queue), train (start and cancel jobs), admin (promote, roll back, delete models).
ROLES: tuple[Role, ...] = ("read", "review", "train", "admin")


class ApiKey(BaseModel):
    """One accepted key, its name (which job records and promotions carry) and its role."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    key: SecretStr
    # A named key says what it may do; one that does not may only read.
    role: Role = "read"

    def allows(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRASHCAM_", env_file=".env", extra="ignore")

    # Models: an explicit checkpoint wins; else the store's default; else the shipped weights.
    model_path: Path | None = None
    shipped_model_path: Path = SHIPPED_MODEL_DIR / CHECKPOINT_FILE
    var_dir: Path = PROJECT_ROOT / "var"
    database_url: str | None = Field(
        None,
        description="the SQL database of job records, job leases and the model registry (SQLAlchemy URL; "
        "postgresql+psycopg://... for several hosts); None: SQLite at <var_dir>/trashcam.sqlite3, one host",
    )
    artifact_root: Path | None = Field(
        None,
        description="the folder of every job's files, stored models and reviewed photos; every host of one "
        "service mounts the same one (None: <var_dir>)",
    )
    device: str = Field("auto", description="'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'")
    inference_lanes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="batches that run at once, each on a thread of its own (app.lanes); None: one per "
        "CPU core (at most 4), one on a GPU",
    )
    inference_threads: int | None = Field(
        None, ge=1, description="torch threads of each lane; None: the CPU cores shared out among the lanes"
    )
    inference_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="'auto': bf16 on a GPU or on a CPU with bf16 instructions, else fp32 "
        "(emulated bf16 is many times slower)",
    )
    inference_channels_last: bool = Field(
        True, description="convolve in the NHWC layout (faster on oneDNN, cuDNN)"
    )
    inference_backend: Backend = Field(
        "auto",
        description="what runs the forward pass: 'openvino' (compiled, CPU only), 'torch' (eager), or "
        "'auto': OpenVINO on a CPU where the model converts, torch on a GPU",
    )
    runtime_cache_dir: Path | None = Field(
        None,
        description="where models converted for OpenVINO are kept, by their weights' sha256 and "
        "OpenVINO's version, so a restart does not convert again (None: <var_dir>/cache)",
    )
    inference_int8: bool = Field(
        True,
        description="on OpenVINO, serve a model's int8 network where one is stored beside its checkpoint "
        "for its weights (made by `trashcam-train quantize`, which keeps it only within 0.5 points of "
        "fp32 top-1); false: the compiled network at the inference precision",
    )

    # "Unsure" answers: over the thresholds in each model's calibration (None: the model's own).
    unsure_min_probability: float | None = Field(
        None, ge=0.0, le=1.0, description="calibrated top-1 probability under which a prediction is unsure"
    )
    unsure_max_energy: float | None = Field(
        None, description="energy score (-logsumexp of the logits) over which a photo is out of distribution"
    )
    unsure_max_distance: float | None = Field(
        None,
        ge=0.0,
        le=2.0,
        description="feature distance to the training photos over which a photo is out of distribution",
    )
    sure_target_accuracy: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="how often sure answers must be right on the model's validation photos: the "
        "probability threshold is chosen for it where the model stores its validation scores (None: "
        "the model's own choice)",
    )
    # The review queue: which answered photos are kept for a person to label.
    review: Literal["off", "unsure", "all"] = Field(
        "off",
        description="keep the photos answered as unsure ('unsure'), every one ('all') or none for review",
    )
    review_retention_days: float = Field(
        30.0, gt=0, description="review items (photos, labels) are deleted this long after they were stored"
    )
    drift_window_seconds: float = Field(
        3600.0,
        gt=0,
        description="the window of /metrics' recent unsure shares (trashcam_recent_unsure_share)",
    )

    # Micro-batching of concurrent /classify and /explain requests. A batch starts as soon as the model
    # is free, with every request waiting then; requests that arrive while it runs form the next one.
    batch_max_size: int = Field(16, ge=1, le=256)
    batch_max_wait_ms: float = Field(
        0.0, ge=0.0, le=1000.0, description="how long a request waits for company when the model is idle"
    )
    # Requests waiting for the model beyond this are answered 503 instead of queueing without bound.
    batch_max_pending: int = Field(256, ge=1)
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="the longest wait for the next part of a request's body; a client that sends nothing "
        "for this long is answered 408 and its connection freed",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="the longest a connection may take to send a request's header, from when it opened or "
        "its last response was sent; past it the connection is closed",
    )
    max_connections: int = Field(
        16_000,
        ge=1,
        description="connections the API serves at once; past it a new one is answered 503 and closed, "
        "before the process runs out of file descriptors (fewer if its open-file limit is lower)",
    )
    max_expensive_explanations: int = Field(
        1,
        ge=0,
        description="explanations by a method of a forward pass per channel (scorecam) that run at once; "
        "on a CPU never more than the lanes less one, so that one lane is always left to the others",
    )

    # Uploads.
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_request_pixels: int = Field(
        100_000_000, ge=1, description="pixels of all the photos of one request together"
    )
    max_image_bytes: int = Field(
        120_000_000,
        ge=1,
        description="bytes a photo decodes to (pixels x its mode's bytes: a 16-bit, float or transparent "
        "photo takes more than RGB); default: an RGB photo of MAX_IMAGE_PIXELS",
    )
    max_request_bytes: int = Field(
        300_000_000, ge=1, description="bytes all the photos of one request decode to together"
    )
    max_decoding_bytes: int = Field(
        600_000_000,
        ge=1,
        description="bytes of photos being decoded at once, across requests; past it a request waits (up to "
        "30 s, then 503)",
    )
    overlay_max_side: int = Field(
        1024, ge=16, description="longest side of an /explain overlay; larger photos are scaled down"
    )
    max_files_per_request: int = Field(32, ge=1)
    max_archive_bytes: int = Field(
        1024 * 1024 * 1024, ge=1, description="uncompressed bytes in an uploaded archive"
    )
    max_archive_files: int = Field(100_000, ge=1)
    max_archive_ratio: float = Field(
        50.0,
        gt=1.0,
        description="uncompressed bytes per byte of an uploaded archive; photos hardly compress, so a far "
        "higher ratio is a bomb",
    )

    # Jobs: bounds on what one key, and everyone together, may leave waiting or on disk.
    max_queued_jobs: int = Field(
        200, ge=1, description="jobs waiting in the queues, of every key; past it a new job is 503"
    )
    max_active_jobs_per_key: int = Field(
        10, ge=1, description="jobs of one key queued or running at once; past it a new one is 429"
    )
    max_training_processes: int = Field(
        8,
        ge=1,
        le=64,
        description="the most processes one training job may ask to train in (DDP under torchrun, on the "
        "worker's host: a GPU each where it has GPUs, else a share of its cores)",
    )
    max_job_bytes_per_key: int = Field(
        20 * 1024**3,
        ge=1,
        description="bytes the job folders of one key hold (uploads, checkpoints, results); past it a new "
        "job is 429 until finished jobs are purged or reach their retention time",
    )

    # Security: keys accepted in the X-API-Key header, as {"name", "key", "role"} objects, or as plain
    # strings (admin keys named key-1, key-2, ...). With none configured, state-changing endpoints are
    # refused (403) rather than left open.
    api_keys: list[ApiKey] = Field(default_factory=list)
    protect_reads: bool = False

    @field_validator("api_keys", mode="before")
    @classmethod
    def _named(cls, keys: object) -> object:
        if not isinstance(keys, list):
            return keys
        return [
            {"name": f"key-{number}", "key": key, "role": "admin"}
            if isinstance(key, str | SecretStr)
            else key
            for number, key in enumerate(keys, start=1)
        ]

    @field_validator("api_keys")
    @classmethod
    def _long_enough(cls, keys: list[ApiKey]) -> list[ApiKey]:
        if any(len(key.key.get_secret_value()) < 16 for key in keys):
            raise ValueError("every API key must be at least 16 characters long")
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"API key names must differ: {sorted(names)}")
        secrets = [key.key.get_secret_value() for key in keys]
        if len(set(secrets)) != len(secrets):
            raise ValueError("two API keys have the same secret: each key must be its own")
        return keys

    # Jobs.
    redis_url: str = "redis://127.0.0.1:6379/0"
    training_queue: str = "training"
    heatmaps_queue: str = "heatmaps"
    data_root: Path | None = Field(None, description="folder that POST /train may read data sets from")
    max_archive_upload_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=1, description="size of an uploaded archive"
    )
    # A job whose worker stops renewing its lock for this long is considered lost and resubmitted.
    job_lock_seconds: int = Field(120, ge=5)
    # Redis redelivers an unacknowledged task after this long (a backstop for the lock above).
    job_visibility_timeout_seconds: int = Field(6 * 3600, ge=60)
    job_recovery_interval_seconds: float = Field(30.0, gt=0)
    # A finished job's uploads, extracted data, checkpoints and result zip are removed this long after
    # it finished (its record and report stay; registered models live in the store, never here).
    job_retention_days: float = Field(7.0, gt=0)

    @property
    def unsure_thresholds(self) -> Thresholds:
        return Thresholds(
            min_probability=self.unsure_min_probability,
            max_energy=self.unsure_max_energy,
            max_distance=self.unsure_max_distance,
            target_accuracy=self.sure_target_accuracy,
        )

    @property
    def database(self) -> str:
        """The database URL in use: the setting, else SQLite in the var dir."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'trashcam.sqlite3').resolve()}"

    @property
    def artifacts(self) -> Path:
        return self.artifact_root if self.artifact_root is not None else self.var_dir

    @property
    def models_dir(self) -> Path:
        return self.artifacts / "models"

    @property
    def runtime_cache(self) -> Path:
        return self.runtime_cache_dir if self.runtime_cache_dir is not None else self.var_dir / "cache"

    @property
    def review_dir(self) -> Path:
        return self.artifacts / "review"

    @property
    def jobs_dir(self) -> Path:
        return self.artifacts / "jobs"

    @property
    def resolved_data_root(self) -> Path:
        return self.data_root if self.data_root is not None else self.var_dir / "data"


@lru_cache
def get_settings() -> Settings:
    return Settings()
