"""A worker's heartbeat: a file under the artifact root (which every host mounts) that the worker
touches every few seconds, from a thread of its own, so that a health check sees a worker as alive while
it runs a long task too (a training worker's solo pool answers no Celery ping until its task ends)."""

import contextlib
import threading
import time
from pathlib import Path

from core.settings import Settings

#: How often a worker touches its file, and how old the file may be for the worker to count as alive.
BEAT_SECONDS = 10.0
ALIVE_SECONDS = 60.0


def heartbeat_path(settings: Settings, node: str) -> Path:
    """The file of the Celery worker named ``node`` (``training@host``)."""
    return settings.artifacts / "workers" / f"{node}.alive"


class Heartbeat:
    """Touches ``path`` every ``interval`` seconds until :meth:`stop`, which removes it."""

    def __init__(self, path: Path, interval: float = BEAT_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            with contextlib.suppress(OSError):  # a full or read-only disk must not end the worker
                self.path.touch()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval)
        self.path.unlink(missing_ok=True)


def is_alive(path: Path, max_age: float = ALIVE_SECONDS) -> bool:
    """Whether the worker of ``path`` touched it within ``max_age`` seconds."""
    try:
        return time.time() - path.stat().st_mtime <= max_age
    except FileNotFoundError:
        return False


def live_workers(settings: Settings, queue: str) -> list[str]:
    """The Celery node names (``training@host``) of the workers on ``queue`` whose heartbeat is fresh."""
    folder = settings.artifacts / "workers"
    return sorted(path.stem for path in folder.glob(f"{queue}@*.alive") if is_alive(path))
