"""Docker cannot run here, so check the deployment files against the code they start."""

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser, piece_commands, worker_command
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR}`` substitution, as ``docker compose`` does it."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return environ.get(name) or (default or "")

    return re.sub(r"\$\{([A-Z0-9_]+)(:-([^}]*))?\}", substitute, value)


def service_environment(service: str, environ: dict[str, str]) -> dict[str, str]:
    """A service's environment as compose would give it, under the shell environment ``environ``."""
    return {
        key: interpolate(str(value), environ)
        for key, value in compose()["services"][service]["environment"].items()
    }


def scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return dict(project["project"]["scripts"])


def check_trashcam_command(command: list[str]) -> None:
    assert command[0] in scripts(), f"{command[0]} is not an entry point of the project"
    build_parser().parse_args(command[1:])  # exits (fails the test) on an unknown subcommand or option


def test_the_services_are_api_two_workers_and_redis() -> None:
    assert set(compose()["services"]) == {"api", "training-worker", "heatmap-worker", "redis"}


@pytest.mark.parametrize("service", ["api", "training-worker", "heatmap-worker"])
def test_every_command_points_at_a_real_entry_point(service: str) -> None:
    definition = compose()["services"][service]
    check_trashcam_command(definition["command"])
    assert definition["depends_on"]["redis"]["condition"] == "service_healthy"
    assert definition["environment"]["TRASHCAM_REDIS_URL"].startswith("redis://redis:")
    assert any(volume.startswith("trashcam-data:") for volume in definition["volumes"])


def test_the_workers_serve_the_two_queues() -> None:
    services = compose()["services"]
    queues = {services[name]["command"][-1] for name in ("training-worker", "heatmap-worker")}
    assert queues == {"training", "heatmaps"}


def test_redis_has_a_healthcheck() -> None:
    assert compose()["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_entry_points_resolve_to_callables() -> None:
    import importlib

    for target in scripts().values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_dockerfile_copies_every_package_and_runs_an_entry_point() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("app", "models", "training", "worker"):
        assert f"COPY {package} ./{package}" in dockerfile
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd is not None
    check_trashcam_command(yaml.safe_load(cmd.group(1)))
    assert "torch==2.14.1 torchvision==0.29.1" in dockerfile


def test_the_compose_services_run_the_commands_the_integration_tests_run() -> None:
    services = compose()["services"]
    for piece, command in piece_commands().items():
        assert services[piece]["command"] == command, piece


def test_the_makefile_serves_with_the_command_that_starts_those_pieces() -> None:
    serve = re.search(r"^serve:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert serve is not None
    assert serve.group(1).split()[:2] == ["$(BIN)/trashcam", "serve"]


def test_a_training_worker_may_start_processes_of_its_own() -> None:
    # A prefork pool runs tasks in daemonic children, and the training data loader's processes
    # cannot start there ("daemonic processes are not allowed to have children").
    command = worker_command("training")
    assert command[command.index("--pool") + 1] in {"solo", "threads"}


@pytest.mark.parametrize("service", ["api", "training-worker", "heatmap-worker"])
def test_the_shipped_environment_is_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A key under 16 characters made every piece exit at start-up, and compose restart it in a loop.
    for key, value in service_environment(service, {}).items():
        monkeypatch.setenv(key, value)
    assert Settings().api_keys == []
    given = service_environment(service, {"TRASHCAM_API_KEYS": '["a-long-random-key-123"]'})
    assert given["TRASHCAM_API_KEYS"] == '["a-long-random-key-123"]'


def test_every_piece_has_a_health_check_of_its_own() -> None:
    services = compose()["services"]
    assert "/ready" in " ".join(services["api"]["healthcheck"]["test"])
    for service, queue in (("training-worker", "training"), ("heatmap-worker", "heatmaps")):
        test = services[service]["healthcheck"]["test"]
        assert test[0] == "CMD"
        check_trashcam_command(test[1:])
        assert test[1:] == ["trashcam", "ping", "--queue", queue]


def test_make_serve_listens_on_this_machine_only_unless_told() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", makefile, re.MULTILINE)
    assert "--host $(HOST)" in makefile
