"""A deployment of several hosts on one machine, over loopback: API replicas with local dirs of their own,
nginx in front of them (Debian's, with the shipped ``deploy/nginx/trashcam.conf.template``), training and
heatmap workers, one SQL database, one Redis and one artifact root that every piece shares.

Every piece starts with the command that docker-compose.yml runs (``app.cli.piece_commands``). Used by the
integration test of replicas (``tests/integration/test_replicas.py``) and by ``bench.replicas``.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx2

from app.cli import piece_commands, trashcam_command

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Training options of a job that takes seconds an epoch on a CPU: a 4-channel simple CNN at 32 px.
TINY_TRAINING = {"model": "simple_cnn", "model_kwargs": '{"width": 4}', "batch_size": "4", "input_size": "32"}
NGINX_TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "trashcam.conf.template"
#: What the official nginx image's ``nginx.conf`` gives the files of conf.d/, for a server run by a user
#: that is not root, with every file under its own folder.
NGINX_MAIN = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/conf.d/*.conf;
}}
"""


#: One answer a client got: (monotonic time, status or 0 for none, Retry-After, or the client's error
#: when none came).
Answer = tuple[float, int, str | None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_training(
    api: httpx2.Client, archive: bytes, key: str, *, epochs: int, name: str | None = None
) -> httpx2.Response:
    """``POST /train`` of a tiny model (:data:`TINY_TRAINING`) on ``archive``, a zip of class folders."""
    fields = {**TINY_TRAINING, "epochs": str(epochs), **({} if name is None else {"name": name})}
    return api.post(
        "/train", files={"file": ("photos.zip", archive)}, data=fields, headers={"X-API-Key": key}
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def render_nginx(values: dict[str, str]) -> str:
    """The shipped template with its ``${TRASHCAM_...}`` filled in, as the nginx image's envsubst does
    (nginx's own ``$host`` and the like are left alone)."""
    text = NGINX_TEMPLATE.read_text()
    missing = set(re.findall(r"\$\{(TRASHCAM_[A-Z0-9_]+)\}", text)) - set(values)
    if missing:
        raise ValueError(f"no value for {', '.join(sorted(missing))}")
    return re.sub(r"\$\{(TRASHCAM_[A-Z0-9_]+)\}", lambda match: values[match.group(1)], text)


class Clients:
    """``count`` clients that each send ``request`` one after another until stopped."""

    def __init__(self, url: str, count: int, request: Callable[[httpx2.Client], httpx2.Response]) -> None:
        self.url, self.request = url, request
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def start(self) -> "Clients":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def __enter__(self) -> "Clients":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def failed(self, since: float = float("-inf"), until: float = float("inf")) -> list[Answer]:
        """The answers that were not 200 (0: none came), in ``[since, until)``."""
        return [answer for answer in self.answers if since <= answer[0] < until and answer[1] != 200]

    def _run(self) -> None:
        with httpx2.Client(base_url=self.url, timeout=30) as api:
            while not self._stop.is_set():
                try:
                    answer = self.request(api)
                    self.answers.append(
                        (time.monotonic(), answer.status_code, answer.headers.get("retry-after"))
                    )
                except httpx2.HTTPError as error:
                    self.answers.append((time.monotonic(), 0, type(error).__name__))
                    time.sleep(0.05)

    def summary(self, t0: float, since: float = float("-inf"), until: float = float("inf")) -> dict[str, Any]:
        chosen = [answer for answer in self.answers if since <= answer[0] < until]
        failed = self.failed(since, until)
        return {
            "requests": len(chosen),
            "statuses": {str(k): v for k, v in sorted(Counter(status for _, status, _ in chosen).items())},
            "failed_with_retry_after": sum(status != 0 and retry is not None for _, status, retry in failed),
            "failed_span_s": [round(failed[0][0] - t0, 3), round(failed[-1][0] - t0, 3)] if failed else None,
            "failed": [
                {"at_s": round(at - t0, 3), "status": status, _detail(status): extra}
                for at, status, extra in failed
            ][:50],
        }


def _detail(status: int) -> str:
    """What the third item of an answer is: the client's error for no answer, else Retry-After."""
    return "error" if status == 0 else "retry_after"


@dataclass
class Deployment:
    """The pieces of one service, each a process of its own; ``env`` is what every piece shares."""

    root: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_ports: dict[str, int] = field(default_factory=dict)
    nginx_port: int = 0
    log_files: list[IO[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path, *, database_url: str, shipped_model: Path, **settings: str) -> "Deployment":
        """A deployment under ``root`` (its artifact root, logs and the hosts' own dirs) on ``database_url``,
        with a Redis server of its own; ``settings``: more TRASHCAM_* variables, by name without it."""
        (root / "logs").mkdir(parents=True, exist_ok=True)
        redis_port = free_port()
        env = {
            **os.environ,
            "TRASHCAM_DATABASE_URL": database_url,
            "TRASHCAM_ARTIFACT_ROOT": str(root / "artifacts"),
            "TRASHCAM_SHIPPED_MODEL_PATH": str(shipped_model),
            "TRASHCAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "TRASHCAM_INFERENCE_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            **{f"TRASHCAM_{name.upper()}": value for name, value in settings.items()},
        }
        deployment = cls(root, env)
        deployment._popen("redis", redis_command(redis_port), env)
        wait_until(lambda: redis_answers(redis_port), 15, "redis")
        return deployment

    def url(self, name: str | None = None) -> str:
        """The address of replica ``name``, or of nginx (None)."""
        port = self.nginx_port if name is None else self.api_ports[name]
        return f"http://127.0.0.1:{port}"

    def host_env(self, host: str) -> dict[str, str]:
        """A host's environment: the shared settings, and a var dir of its own (its caches)."""
        return {**self.env, "TRASHCAM_VAR_DIR": str(self.root / "hosts" / host)}

    def start_api(self, name: str, port: int | None = None) -> None:
        port = port or self.api_ports.get(name) or free_port()
        self.api_ports[name] = port
        self._start_piece("api", name, port)
        wait_until(lambda: self._ready(name), 90, name)

    def _ready(self, name: str) -> bool:
        try:
            return httpx2.get(f"{self.url(name)}/health", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def start_worker(self, piece: str, name: str) -> None:
        """A worker (``training-worker`` or ``heatmap-worker``) on a host of its own, ``name``."""
        self._start_piece(piece, name, 0)
        wait_until(lambda: b"ready." in (self.root / "logs" / f"{name}.log").read_bytes(), 90, name)

    def start_nginx(self, replicas: tuple[str, str]) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        prefix = self.root / "nginx"
        (prefix / "conf.d").mkdir(parents=True, exist_ok=True)
        self.nginx_port = free_port()
        values = {
            "TRASHCAM_API_1": f"127.0.0.1:{self.api_ports[replicas[0]]}",
            "TRASHCAM_API_2": f"127.0.0.1:{self.api_ports[replicas[1]]}",
            "TRASHCAM_LISTEN": f"127.0.0.1:{self.nginx_port}",
            "TRASHCAM_INFERENCE_MAX_BODY": "321m",  # the API's own limit of a request, as compose sets it
        }
        (prefix / "conf.d" / "trashcam.conf").write_text(render_nginx(values))
        (prefix / "nginx.conf").write_text(NGINX_MAIN.format(prefix=prefix))
        command = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
        self._popen("nginx", command, self.env)
        wait_until(lambda: _listens(self.nginx_port), 15, "nginx")

    def _start_piece(self, piece: str, name: str, port: int) -> None:
        command = trashcam_command(piece_commands("127.0.0.1", port)[piece])
        self._popen(name, command, self.host_env(name))

    def _popen(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = open(self.root / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop
        self.log_files.append(log)
        self.processes[name] = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(60)

    def log(self, name: str) -> str:
        """Everything piece ``name`` has written."""
        return (self.root / "logs" / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for name in [name for name in self.processes if name != "redis"] + ["redis"]:
            if name in self.processes:
                self.kill(name, signal.SIGTERM)
        for handle in self.log_files:
            handle.close()


def redis_command(port: int) -> list[str]:
    """A Redis server of a test's or a benchmark's own on loopback ``port``, keeping nothing on disk."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
