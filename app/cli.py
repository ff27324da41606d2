"""``trashcam``: start the API, a worker, or everything at once.

trashcam serve                 # Redis (if none answers), both workers (kept running) and the API
trashcam api [--host H --port P]
trashcam worker --queue training|heatmaps
trashcam ping --queue training|heatmaps   # exit 0 when this host's worker of that queue is alive
trashcam db upgrade            # the database's schema to this version's (every piece also does it)
trashcam db import             # a var dir written before the database, into it (once; nothing removed)
"""

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import redis
import uvicorn
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app.connections import quiet_floods, server_options
from core.database import open_database, redact_password
from core.heartbeat import is_alive
from core.importing import import_var_dir
from core.jobs import JOB_KINDS, JobKind, JobStore
from core.model_manager import model_store
from core.queue import KINDS_OF_JOBS, queue_of
from core.settings import get_settings

logger = logging.getLogger("trashcam.serve")
#: How long ``serve`` waits before it starts a worker that exited again: the first time, at most (the
#: pause doubles with each exit in a row), and how long a worker must run for the next exit to count as
#: a first one again.
RESTART_FIRST_PAUSE_S = 1.0
RESTART_MAX_PAUSE_S = 60.0
RESTART_STABLE_S = 60.0


def run_api(host: str, port: int) -> None:
    settings = get_settings()
    quiet_floods()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        **server_options(settings.header_timeout_seconds, settings.max_connections),
        # An idle kept-alive connection holds a descriptor too.
        timeout_keep_alive=5,
    )


def piece_commands(host: str = "0.0.0.0", port: int = 8000) -> dict[str, list[str]]:
    """How each piece of the service is started: the commands that docker-compose.yml runs (a test
    holds it to them), ``serve`` starts, and the integration tests run."""
    return {
        "api": ["trashcam", "api", "--host", host, "--port", str(port)],
        "training-worker": ["trashcam", "worker", "--queue", "training"],
        "heatmap-worker": ["trashcam", "worker", "--queue", "heatmaps"],
    }


def worker_name(kind: JobKind, host: str = "%h") -> str:
    """The Celery node name of this host's worker of one kind of job (``%h``: Celery's host name)."""
    return f"{queue_of(kind, get_settings())}@{host}"


def worker_command(kind: JobKind) -> list[str]:
    """The Celery worker of one kind of job: one process, one task at a time (training uses every core
    itself), on that kind's queue, with that kind's pool (``core.queue.KINDS_OF_JOBS``)."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", queue_of(kind, get_settings()), *KINDS_OF_JOBS[kind].pool, "-n", worker_name(kind),
        "--loglevel", "INFO",
    ]  # fmt: skip


def worker_alive(kind: JobKind) -> bool:
    """Whether this host's worker of ``kind`` is alive: its heartbeat is fresh (a container's health
    check; a Celery ping would go unanswered while a training worker runs its task)."""
    return is_alive(get_settings(), worker_name(kind, socket.gethostname()))


def trashcam_command(args: list[str]) -> list[str]:
    """``args`` (a :func:`piece_commands` entry) with ``trashcam`` resolved to this installation's."""
    script = Path(sys.executable).with_name("trashcam")
    return [str(script) if script.is_file() else "trashcam", *args[1:]]


def ensure_redis(url: str) -> subprocess.Popen[bytes] | None:
    """Start a local, memory-only Redis if ``url`` does not answer; return it to stop later."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return None
    except redis.RedisError:
        pass
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(f"no Redis answers at {url} and redis-server is not installed")
    port = str(urlsplit(url).port or 6379)
    process = subprocess.Popen(
        [server, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    )
    for _ in range(50):
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            return process
        except redis.RedisError:
            time.sleep(0.1)
    raise SystemExit(f"redis-server did not start on port {port}")


def _exit_on_signal(signum: int, _frame: object) -> None:
    # uvicorn shuts down on SIGTERM and then raises the signal again; with the default action that
    # would end this process before it stops its children. Exiting through Python runs serve's finally.
    raise SystemExit(128 + signum)


class Supervisor:
    """Keeps ``serve``'s workers running: one that exits is started again, after a pause that doubles
    with each exit in a row (from :data:`RESTART_FIRST_PAUSE_S` to :data:`RESTART_MAX_PAUSE_S`) and starts
    over once it has run :data:`RESTART_STABLE_S`; the log says each time."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.commands = {piece: trashcam_command(piece_commands()[piece]) for piece in pieces}
        self.processes = {piece: subprocess.Popen(command) for piece, command in self.commands.items()}
        self._started = dict.fromkeys(pieces, time.monotonic())
        self._pause = dict.fromkeys(pieces, RESTART_FIRST_PAUSE_S)
        self._due: dict[str, float] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            now = time.monotonic()
            for piece, process in self.processes.items():
                code = process.poll()
                if code is None:
                    if now - self._started[piece] >= RESTART_STABLE_S:
                        self._pause[piece] = RESTART_FIRST_PAUSE_S
                    continue
                due = self._due.get(piece)
                if due is None:
                    self._due[piece] = now + self._pause[piece]
                    logger.error(
                        "the %s exited (code %s): starting it again in %.0f s",
                        piece,
                        code,
                        self._pause[piece],
                    )
                elif now >= due:
                    del self._due[piece]
                    self.processes[piece] = subprocess.Popen(self.commands[piece])
                    self._started[piece] = now
                    self._pause[piece] = min(2 * self._pause[piece], RESTART_MAX_PAUSE_S)
                    logger.warning("the %s started again (pid %d)", piece, self.processes[piece].pid)

    def stop(self) -> None:
        """Stop watching, then every worker (SIGTERM, then SIGKILL after 30 s)."""
        self._stopping.set()
        self._thread.join()
        stop_processes(list(self.processes.values()))


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def serve(host: str, port: int) -> None:
    """Redis if none answers, both workers (started again when they exit) and the API; a SIGTERM or
    Ctrl-C stops every one of them."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    settings = get_settings()
    redis_server = ensure_redis(settings.redis_url)
    workers = Supervisor(("training-worker", "heatmap-worker"))
    workers.start()
    try:
        run_api(host, port)
    finally:
        workers.stop()
        if redis_server is not None:
            stop_processes([redis_server])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trashcam", description="Explainable waste-image recognition service."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "Redis if needed, both workers and the API"), ("api", "the HTTP API only")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=8000)
    worker = commands.add_parser("worker", help="a Celery worker for one queue")
    worker.add_argument("--queue", choices=JOB_KINDS, required=True)
    ping = commands.add_parser("ping", help="exit 0 when this host's worker of a queue is alive, else 1")
    ping.add_argument("--queue", choices=JOB_KINDS, required=True)
    db = commands.add_parser("db", help="the SQL database of jobs and models (TRASHCAM_DATABASE_URL)")
    db.add_argument(
        "action",
        choices=("upgrade", "import"),
        help="upgrade: the schema to this version's; import: a var dir written before the database",
    )
    return parser


def open_database_or_exit(url: str) -> None:
    try:
        open_database(url)  # its schema brought up to date once, before the pieces start
    except (SQLAlchemyError, ImportError, OSError, ValueError) as error:
        lines = str(getattr(error, "orig", None) or error).strip().splitlines()
        reason = lines[0] if lines else type(error).__name__
        try:
            shown = redact_password(url)
        except (SQLAlchemyError, ValueError):
            shown = "TRASHCAM_DATABASE_URL (not a database URL)"
        raise SystemExit(f"trashcam: the database {shown} cannot be used: {reason}") from None


def database_command(action: str) -> None:
    settings = get_settings()
    database = open_database(settings.database)  # brings the schema up to date
    if action == "upgrade":
        print(f"{redact_password(database.url)}: schema {database.schema}")  # noqa: T201 - the command's answer
        return
    report = import_var_dir(settings, JobStore.from_settings(settings), model_store(settings))
    print(report.summary())  # noqa: T201 - the command's answer


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        get_settings()
    except ValidationError as error:
        # One line that says which setting is wrong, and an exit status a supervisor can tell apart.
        problems = "; ".join(
            f"TRASHCAM_{'_'.join(str(part) for part in item['loc'][:1]).upper()}: "
            f"{item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        )
        raise SystemExit(f"trashcam: invalid settings: {problems}") from None
    if args.command == "ping":
        sys.exit(0 if worker_alive(args.queue) else 1)
    # Every other piece needs the database: one line that says so when it cannot be reached (a
    # supervisor starts the piece again), not a traceback from inside the server.
    open_database_or_exit(get_settings().database)
    if args.command == "db":
        database_command(args.action)
        return
    if args.command == "serve":
        serve(args.host, args.port)
    elif args.command == "api":
        run_api(args.host, args.port)
    else:
        # Become the worker (same process id), so that a signal sent to this command reaches Celery.
        command = worker_command(args.queue)
        os.execv(command[0], command)


if __name__ == "__main__":
    main()
