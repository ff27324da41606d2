"""The deployment files against the code they start: ``docker compose config`` (or Debian's
``docker-compose``, which ``make test`` installs when neither is here) validates the compose file, and
Debian's nginx the shipped nginx configuration; Docker itself cannot run here."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli import build_parser, piece_commands, worker_command
from app.limits import body_limit
from bench.deployment import NGINX_MAIN, render_nginx
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


PIECES = ["api", "api-2", "training-worker", "heatmap-worker"]


def compose_command() -> list[str]:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is here: `make test` installs Debian's")


def test_docker_compose_config_passes() -> None:
    done = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_services_are_two_replicas_behind_nginx_two_workers_postgres_and_redis() -> None:
    assert set(compose()["services"]) == {*PIECES, "nginx", "postgres", "redis"}


@pytest.mark.parametrize("service", PIECES)
def test_every_piece_shares_the_database_redis_and_the_artifact_root(service: str) -> None:
    definition = compose()["services"][service]
    check_trashcam_command(definition["command"])
    assert definition["depends_on"]["redis"]["condition"] == "service_healthy"
    assert definition["depends_on"]["postgres"]["condition"] == "service_healthy"
    environment = definition["environment"]
    assert environment["TRASHCAM_REDIS_URL"].startswith("redis://redis:")
    assert environment["TRASHCAM_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in environment["TRASHCAM_DATABASE_URL"]
    root = environment["TRASHCAM_ARTIFACT_ROOT"]
    assert f"trashcam-artifacts:{root}" in definition["volumes"]


def test_nginx_buffers_what_the_api_takes_in_one_inference_request() -> None:
    size = compose()["services"]["nginx"]["environment"]["TRASHCAM_INFERENCE_MAX_BODY"]
    number, unit = int(size[:-1]), size[-1]
    assert unit == "m"
    assert number * 2**20 >= body_limit(False, Settings())  # else nginx's own 413, not the API's


def test_nginx_sends_to_both_replicas_with_the_shipped_configuration(tmp_path: Path) -> None:
    nginx = compose()["services"]["nginx"]
    template = "./deploy/nginx/trashcam.conf.template:/etc/nginx/templates/trashcam.conf.template:ro"
    assert template in nginx["volumes"]
    assert {nginx["environment"]["TRASHCAM_API_1"], nginx["environment"]["TRASHCAM_API_2"]} == {
        "api:8000",
        "api-2:8000",
    }
    # The configuration the image makes from the template, checked by nginx itself (upstream names that
    # only compose resolves stand in as loopback addresses).
    values = {**nginx["environment"], "TRASHCAM_API_1": "127.0.0.1:8001", "TRASHCAM_API_2": "127.0.0.1:8002"}
    prefix = tmp_path / "nginx"
    (prefix / "conf.d").mkdir(parents=True)
    (prefix / "conf.d" / "trashcam.conf").write_text(render_nginx(values))
    (prefix / "nginx.conf").write_text(NGINX_MAIN.format(prefix=prefix))
    nginx_binary = shutil.which("nginx") or "/usr/sbin/nginx"
    done = subprocess.run(
        [nginx_binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


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
    for package in ("app", "core", "models", "training", "worker"):
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


@pytest.mark.parametrize("service", PIECES)
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
