"""The containers' health checks, run as docker-compose.yml runs them, against the running pieces."""

import subprocess
from pathlib import Path

import httpx2
import pytest
import yaml

from app.cli import trashcam_command
from tests.integration.conftest import REPO_ROOT, System

pytestmark = pytest.mark.integration


def health_check(service: str) -> list[str]:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    test: list[str] = compose["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


@pytest.mark.parametrize("service", ["training-worker", "heatmap-worker"])
def test_a_running_worker_passes_its_health_check_and_a_missing_one_fails(
    service: str, system: System, tmp_path: Path
) -> None:
    command = trashcam_command(health_check(service))
    alive = subprocess.run(
        command, env=system.env, cwd=REPO_ROOT, capture_output=True, timeout=60, check=False
    )
    assert alive.returncode == 0, alive.stderr
    # Another Redis database has no worker's heartbeat in it: the check fails, it does not hang or pass.
    elsewhere = {**system.env, "TRASHCAM_REDIS_URL": f"redis://127.0.0.1:{system.redis_port}/1"}
    missing = subprocess.run(
        command, env=elsewhere, cwd=REPO_ROOT, capture_output=True, timeout=60, check=False
    )
    assert missing.returncode == 1


def test_the_api_health_check_asks_whether_it_is_ready(system: System) -> None:
    check = " ".join(health_check("api"))
    assert "/ready" in check
    assert httpx2.get(f"{system.api_url}/ready", timeout=10).status_code == 200
