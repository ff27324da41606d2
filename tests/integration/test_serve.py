"""``trashcam serve``, as ``make serve`` runs it: every piece starts, and every piece stops with it."""

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx2
import pytest

from app.cli import trashcam_command
from bench.deployment import free_port, wait_until
from tests.app.conftest import tiny_checkpoint
from tests.integration.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(child) for child in (task / "children").read_text().split()}
            except OSError:
                continue
            pending += sorted(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def serve_env(tmp_path: Path) -> dict[str, str]:
    """``serve``'s environment: its own var folder, a tiny shipped model, and a Redis port that nothing
    answers on, so that it starts its own."""
    return {
        **os.environ,
        "TRASHCAM_VAR_DIR": str(tmp_path / "var"),
        "TRASHCAM_SHIPPED_MODEL_PATH": str(tiny_checkpoint(tmp_path / "shipped.pt")),
        "TRASHCAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "OMP_NUM_THREADS": "1",
    }


def test_sigterm_to_serve_stops_redis_both_workers_and_the_api(tmp_path: Path) -> None:
    api_port, env = free_port(), serve_env(tmp_path)
    command = trashcam_command(["trashcam", "serve", "--port", str(api_port)])
    log_path = tmp_path / "serve.log"
    children: set[int] = set()
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _ready(api_port), 90, "trashcam serve")
            wait_until(lambda: log_path.read_bytes().count(b"ready.") >= 2, 90, "both workers")
            children = descendants(serve.pid)
            assert len(children) >= 3  # Redis (none answered on its port) and two Celery workers
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)  # raises if serve itself does not stop
            deadline = time.monotonic() + 30
            while any(alive(pid) for pid in children) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = [pid for pid in children if alive(pid)]
            assert not left, (left, log_path.read_text()[-3000:])
        finally:
            if serve.poll() is None:
                serve.kill()
            for pid in children:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _ready(port: int) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def heatmap_worker(serve_pid: int) -> int | None:
    """The pid of serve's own child that runs the heatmap worker (``trashcam worker --queue heatmaps``,
    which becomes Celery's worker on that queue)."""
    for task in Path(f"/proc/{serve_pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            line = cmdline(int(child))
            if "--queue heatmaps" in line or "-Q heatmaps" in line:
                return int(child)
    return None


def test_serve_starts_a_worker_that_died_again_and_says_so(tmp_path: Path) -> None:
    api_port, env = free_port(), serve_env(tmp_path)
    command = trashcam_command(["trashcam", "serve", "--port", str(api_port)])
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _ready(api_port), 90, "trashcam serve")
            wait_until(lambda: log_path.read_bytes().count(b"ready.") >= 2, 90, "both workers")
            first = heatmap_worker(serve.pid)
            assert first is not None
            for pid in [first, *descendants(first)]:
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: b"started again" in log_path.read_bytes(), 30, "the worker's restart")
            second = heatmap_worker(serve.pid)
            assert second is not None
            assert second != first
            text = log_path.read_text()
            assert "the heatmap-worker exited (code -9): starting it again in 1 s" in text
            wait_until(lambda: log_path.read_bytes().count(b"ready.") >= 3, 90, "the new worker")
            ready = httpx2.get(f"http://127.0.0.1:{api_port}/ready", timeout=5)
            assert ready.json()["workers"] == {"training": 1, "heatmaps": 1}
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                serve.kill()
