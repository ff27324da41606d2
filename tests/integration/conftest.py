"""A real system for the integration tests: a Redis server of their own, a uvicorn server running the
API, and a Celery worker process, all configured through TRASHCAM_* environment variables."""

import io
import os
import shutil
import signal
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

import httpx2
import pytest

from app.cli import piece_commands, trashcam_command
from bench.deployment import free_port, redis_answers, redis_command, wait_until
from tests.app.conftest import API_KEY, tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
TRASHNET = REPO_ROOT / "data" / "trashnet-112.tar.gz"

pytestmark = pytest.mark.integration

WORKERS = ("training-worker", "heatmap-worker")


def _says_ready(log: Path) -> bool:
    return b"ready." in log.read_bytes()


@dataclass
class System:
    root: Path
    env: dict[str, str]
    redis_port: int
    api_url: str
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_files: list[IO[bytes]] = field(default_factory=list)

    def start_redis(self) -> None:
        self.processes["redis"] = subprocess.Popen(
            redis_command(self.redis_port), stdout=self._log_file("redis"), stderr=subprocess.STDOUT
        )
        wait_until(partial(redis_answers, self.redis_port), 15, "redis")

    def _start(self, piece: str, name: str | None = None) -> None:
        """Start ``piece`` with the very command that docker-compose.yml and ``trashcam serve`` run (as
        process ``name``, default the piece's, which also names its log)."""
        port = int(self.api_url.rsplit(":", 1)[1])
        name = name or piece
        self.processes[name] = subprocess.Popen(
            trashcam_command(piece_commands("127.0.0.1", port)[piece]),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self._log_file(name),
            stderr=subprocess.STDOUT,
        )

    def start_another_training_worker(self, name: str) -> None:
        """One more training worker beside the first, as a deployment that scales them out runs."""
        self._start("training-worker", name)
        wait_until(partial(_says_ready, self.logs / f"{name}.log"), 60, name)

    def start_api(self) -> None:
        self._start("api")
        wait_until(self._api_answers, 60, "api")

    def _api_answers(self) -> bool:
        try:
            return httpx2.get(f"{self.api_url}/health", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def start_workers(self) -> None:
        """The training and the heatmap worker."""
        for piece in WORKERS:
            self._start(piece)
        for piece in WORKERS:
            log = self.logs / f"{piece}.log"
            wait_until(partial(_says_ready, log), 60, piece)

    def kill_workers(self, sig: int = signal.SIGKILL) -> None:
        for piece in WORKERS:
            self.kill(piece, sig)

    def _log_file(self, name: str) -> IO[bytes]:
        handle = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 -- closed in stop_all
        self.log_files.append(handle)
        return handle

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(30)

    def stop_all(self) -> None:
        for name in (*(set(self.processes) - {"api", "redis"}), "api", "redis"):
            if name in self.processes:
                self.kill(name, signal.SIGTERM)
        for handle in self.log_files:
            handle.close()

    def log(self, name: str, *, whole: bool = False) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return text if whole else text[-4000:]


def trashnet_subset(root: Path, per_class: int, classes: tuple[str, ...] | None = None) -> Path:
    """The first ``per_class`` TrashNet photos of each class (of ``classes``, default all) in ``root``."""
    with tarfile.open(TRASHNET) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        chosen: dict[str, int] = {}
        for member in members:
            label = Path(member.name).parent.name
            if (classes is None or label in classes) and chosen.get(label, 0) < per_class:
                chosen[label] = chosen.get(label, 0) + 1
                data = tar.extractfile(member)
                assert data is not None
                (root / label).mkdir(exist_ok=True)
                (root / label / Path(member.name).name).write_bytes(data.read())
    return root


@pytest.fixture(scope="session")
def trashnet_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real TrashNet photos per class."""
    return trashnet_subset(tmp_path_factory.mktemp("trashnet"), 4)


@pytest.fixture(scope="session")
def site_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site's own labelled photos: three materials, enough (90) for a validation split that can fit a
    temperature."""
    return trashnet_subset(tmp_path_factory.mktemp("site"), 30, ("glass", "metal", "paper"))


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for the integration tests")
    root = tmp_path_factory.mktemp("system")
    logs = root / "logs"
    logs.mkdir()
    redis_port = free_port()
    env = {
        **os.environ,
        "TRASHCAM_VAR_DIR": str(root / "var"),
        "TRASHCAM_SHIPPED_MODEL_PATH": str(tiny_checkpoint(root / "shipped.pt")),
        "TRASHCAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TRASHCAM_API_KEYS": f'["{API_KEY}"]',
        "TRASHCAM_JOB_LOCK_SECONDS": "5",
        "TRASHCAM_JOB_RECOVERY_INTERVAL_SECONDS": "1",
        # Short enough to wait for in a test: a connection that never finishes its header is closed.
        "TRASHCAM_HEADER_TIMEOUT_SECONDS": "3",
        "TRASHCAM_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "TRASHCAM_INFERENCE_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    system = System(root, env, redis_port, f"http://127.0.0.1:{free_port()}", logs)
    try:
        system.start_redis()
        system.start_api()
        system.start_workers()
        yield system
    finally:
        system.stop_all()


@pytest.fixture
def api(system: System) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=system.api_url, timeout=60) as client:
        yield client


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.jpg")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()
