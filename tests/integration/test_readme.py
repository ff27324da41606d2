"""README's runnable blocks (those after a ``<!-- runnable -->`` line), run as written by bash against
the API started with the command users run, serving the shipped model. Only the address differs: the
test's own port stands in for 8000."""

import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from app.cli import trashcam_command
from bench.deployment import free_port, wait_until
from tests.app.conftest import API_KEY
from tests.integration.conftest import REPO_ROOT, TRASHNET, System

pytestmark = pytest.mark.integration

#: Stand-ins for a user's own photos: one TrashNet photo each.
PHOTOS = {"bottle.jpg": "glass/glass1.jpg", "box.jpg": "cardboard/cardboard1.jpg"}


def runnable_blocks(readme: str) -> list[str]:
    return re.findall(r"^<!-- runnable -->\n```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def shipped_api(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``trashcam serve`` as ``make serve`` runs it (the API and both workers), with the shipped model, on
    a port of its own."""
    port = free_port()
    env = {
        **os.environ,
        "TRASHCAM_VAR_DIR": str(tmp_path_factory.mktemp("readme-var")),
        "TRASHCAM_REDIS_URL": f"redis://127.0.0.1:{system.redis_port}/3",
        "TRASHCAM_API_KEYS": f'["{API_KEY}"]',
        "TRASHCAM_INFERENCE_THREADS": "1",
    }
    env.pop("TRASHCAM_SHIPPED_MODEL_PATH", None)
    log = open(system.logs / "readme-api.log", "ab")  # noqa: SIM115 -- closed below
    process = subprocess.Popen(
        trashcam_command(["trashcam", "serve", "--host", "127.0.0.1", "--port", str(port)]),
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Ready: the model loaded, and a live worker on each queue (README's /ready says so).
        wait_until(lambda: _ready(url), 180, "trashcam serve")
        yield url
    finally:
        process.terminate()
        process.wait(90)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False


def test_readme_has_runnable_blocks() -> None:
    assert len(runnable_blocks((REPO_ROOT / "README.md").read_text())) >= 1


@pytest.mark.parametrize("index", range(len(runnable_blocks((REPO_ROOT / "README.md").read_text()))))
def test_a_runnable_readme_block_runs_as_written(index: int, shipped_api: str, tmp_path: Path) -> None:
    block = runnable_blocks((REPO_ROOT / "README.md").read_text())[index]
    with tarfile.open(TRASHNET) as tar:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in tar.getmembers()}
        for name, member in PHOTOS.items():
            data = tar.extractfile(members[member])
            assert data is not None
            (tmp_path / name).write_bytes(data.read())
    # Every curl fails the script on an HTTP error, as it would not by default.
    script = 'set -euo pipefail\ncurl() { command curl --fail-with-body -sS "$@"; }\n' + block.replace(
        "http://localhost:8000", shipped_api
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    if "overlay.png" in block:
        assert (tmp_path / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
