"""A worker's heartbeat: a Redis key that the worker sets every few seconds, from a thread of its own,
with an expiry, so that a health check on any host sees a worker as alive while it runs a long task too
(a training worker's solo pool answers no Celery ping until its task ends), and a worker that died
stops counting once its key expires."""

import contextlib
import threading

import redis

from core.settings import Settings

#: How often a worker sets its key, and how long the key lives (a worker counts as alive meanwhile).
BEAT_SECONDS = 10.0
ALIVE_SECONDS = 60
KEY_PREFIX = "trashcam:worker:"


def heartbeat_key(node: str) -> str:
    """The key of the Celery worker named ``node`` (``training@host``)."""
    return KEY_PREFIX + node


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


class Heartbeat:
    """Sets worker ``node``'s key every ``interval`` seconds until :meth:`stop`, which removes it."""

    def __init__(self, settings: Settings, node: str, interval: float = BEAT_SECONDS) -> None:
        self.client = _client(settings)
        self.key = heartbeat_key(node)
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        with contextlib.suppress(redis.RedisError):  # Redis down: no one can read the key either
            self.client.set(self.key, "alive", ex=ALIVE_SECONDS)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self._beat()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval)
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.key)


def is_alive(settings: Settings, node: str) -> bool:
    """Whether worker ``node`` set its key within :data:`ALIVE_SECONDS` (False if Redis cannot say)."""
    try:
        return bool(_client(settings).exists(heartbeat_key(node)))
    except redis.RedisError:
        return False


def live_workers(settings: Settings, queue: str) -> list[str]:
    """The Celery node names (``training@host``) of the workers on ``queue`` whose key is set."""
    try:
        keys = _client(settings).scan_iter(match=f"{KEY_PREFIX}{queue}@*")
        return sorted(key.decode().removeprefix(KEY_PREFIX) for key in keys)
    except redis.RedisError:
        return []
