"""``trashcam``: start the API, a worker, or everything at once.

trashcam serve                 # Redis (if none answers), both workers and the API
trashcam api [--host H --port P]
trashcam worker --queue training|heatmaps
"""

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import redis
import uvicorn

from app.config import get_settings


def run_api(host: str, port: int) -> None:
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port)


def worker_command(queue: str) -> list[str]:
    # One process per queue; training uses every core itself, so one task at a time.
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", queue, "-c", "1", "-n", f"{queue}@%h", "--loglevel", "INFO",
    ]  # fmt: skip


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


def serve(host: str, port: int) -> None:
    settings = get_settings()
    children = [p for p in [ensure_redis(settings.redis_url)] if p is not None]
    children += [
        subprocess.Popen(worker_command(queue))
        for queue in (settings.training_queue, settings.heatmaps_queue)
    ]
    try:
        run_api(host, port)
    finally:
        for child in reversed(children):
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


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
    worker.add_argument("--queue", choices=("training", "heatmaps"), required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(args.host, args.port)
    elif args.command == "api":
        run_api(args.host, args.port)
    else:
        settings = get_settings()
        queue = settings.training_queue if args.queue == "training" else settings.heatmaps_queue
        raise SystemExit(subprocess.call(worker_command(queue)))


if __name__ == "__main__":
    main()
