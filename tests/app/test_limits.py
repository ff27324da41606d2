import asyncio
import json
import re
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.openapi.utils import get_openapi
from fastapi.testclient import TestClient

from app import cli
from app.access import access_rules, api_routes, needed_role
from app.deps import AdminAccess
from app.main import create_app
from app.parts import FilePartSizes
from core.settings import Settings, get_settings
from tests.app.conftest import API_KEY, api_settings


def chunks(total: int, size: int = 1 << 16, *, file_size: int | None = None) -> Iterator[bytes]:
    """A multipart body of ``total`` bytes of files, each of ``file_size`` (default: one file)."""
    file_size = file_size or total
    for index in range(-(-total // file_size)):
        boundary = b"\r\n--x\r\n" if index else b"--x\r\n"
        yield (
            boundary
            + f'Content-Disposition: form-data; name="files"; filename="{index}.png"\r\n\r\n'.encode()
        )
        for _ in range(file_size // size):
            yield b"\0" * size


def test_a_chunked_upload_with_no_length_is_cut_off_at_the_limit(
    client: TestClient, settings: Settings
) -> None:
    limit = settings.max_upload_bytes * settings.max_files_per_request + (1 << 20)
    # Files each under their own limit, together over the request's.
    response = client.post(
        "/classify",
        content=chunks(limit + (4 << 20), file_size=settings.max_upload_bytes - (1 << 16)),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert "content-length" not in {key.lower() for key in response.request.headers}
    assert response.status_code == 413
    assert f"over the limit of {limit} bytes" in response.json()["detail"]


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI HTTP scope, as a server would pass it to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "headers": headers,
    }


def run_gate(
    settings: Settings, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    """Call the app with a body that must never be read; the messages it sent back."""
    app = create_app(settings, submitter=lambda job: None)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = http_scope(method, path, headers)
    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/train"), ("POST", "/explain/batch"), ("PUT", "/models/default")]
)
def test_a_state_changing_request_without_its_key_is_refused_before_its_body(
    settings: Settings, method: str, path: str
) -> None:
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"600000000")]
    for presented in ([], [(b"x-api-key", b"not-the-key-0123456789")]):
        sent = run_gate(settings, method, path, headers + presented)
        assert sent[0]["type"] == "http.response.start"
        assert sent[0]["status"] == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/classify"),
        ("POST", "/explain"),
        ("POST", "/similar"),
        ("GET", "/models"),
        ("GET", "/train"),
    ],
)
def test_with_protected_reads_a_read_without_its_key_is_refused_before_its_body(
    settings: Settings, method: str, path: str
) -> None:
    settings.protect_reads = True
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"300000000")]
    sent = run_gate(settings, method, path, headers)
    assert sent[0]["status"] == 401


def test_without_protected_reads_a_read_needs_no_key(settings: Settings) -> None:
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"999999999999")]
    # Past the key check, the declared length is the first thing refused: nothing is read.
    assert run_gate(settings, "POST", "/classify", headers)[0]["status"] == 413


def test_a_declared_length_over_the_limit_is_413_before_the_body(settings: Settings) -> None:
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"999999999999")]
    sent = run_gate(settings, "POST", "/train", [*headers, (b"x-api-key", API_KEY.encode())])
    assert sent[0]["status"] == 413


def test_a_file_over_its_own_limit_is_refused_before_the_rest_of_it_is_read(settings: Settings) -> None:
    """A 30 MB file under a request limit of 321 MB: refused once it passes 10 MB, the rest never read."""
    app = create_app(settings, submitter=lambda job: None)
    body = chunks(30 << 20)
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(body, b"")
        read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = http_scope("POST", "/classify", [(b"content-type", b"multipart/form-data; boundary=x")])
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    detail = json.loads(sent[1]["body"])["detail"]
    assert detail == f"0.png: larger than the limit of {settings.max_upload_bytes} bytes"
    assert settings.max_upload_bytes < read <= settings.max_upload_bytes + (2 << 16)


def test_each_file_counts_against_its_own_limit(client: TestClient, settings: Settings) -> None:
    small = b"\0" * 1000
    big = b"\0" * (settings.max_upload_bytes + 1)
    files = [("files", ("small.png", small, "image/png")), ("files", ("big.png", big, "image/png"))]
    response = client.post("/classify", files=files)
    assert response.status_code == 413
    assert response.json()["detail"] == f"big.png: larger than the limit of {settings.max_upload_bytes} bytes"


def test_parts_that_are_not_files_or_not_multipart_are_left_to_the_form_parser() -> None:
    assert FilePartSizes.for_request("application/json", 10) is None
    assert FilePartSizes.for_request("multipart/form-data", 10) is None  # no boundary
    sizes = FilePartSizes.for_request("multipart/form-data; boundary=x", 10)
    assert sizes is not None
    field = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + b"a" * 100
    assert sizes.feed(field) is None
    broken = FilePartSizes.for_request("multipart/form-data; boundary=x", 10)
    assert broken is not None
    assert broken.feed(b"not multipart at all" * 10) is None


def test_a_body_that_stops_arriving_is_408_and_the_connection_let_go(settings: Settings) -> None:
    settings.body_timeout_seconds = 0.3
    app = create_app(settings, submitter=lambda job: None)
    sent: list[dict[str, Any]] = []
    parts = iter(
        [b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n', b"\0" * 100]
    )

    async def receive() -> dict[str, Any]:
        chunk = next(parts, None)
        if chunk is None:
            await asyncio.sleep(3600)  # the client sends nothing more, and does not leave
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = http_scope("POST", "/classify", [(b"content-type", b"multipart/form-data; boundary=x")])
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["detail"] == "no part of the request body arrived for 0.3 s"


def test_the_api_server_bounds_its_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setenv("TRASHCAM_MAX_CONNECTIONS", "123")
    get_settings.cache_clear()
    try:
        cli.run_api("127.0.0.1", 8000)
    finally:
        get_settings.cache_clear()
    assert calls[0]["limit_concurrency"] == 123
    assert calls[0]["timeout_keep_alive"] == 5
    # The header deadline, on the faster of uvicorn's parsers (httptools is a dependency).
    assert calls[0]["http"].__name__ == "HttpToolsWithHeaderDeadline"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/train", "GET, HEAD, POST"),
        ("OPTIONS", "/models/default", "GET, HEAD, PUT"),
        ("OPTIONS", "/train/0123456789abcdef0123456789abcdef", "DELETE, GET, HEAD"),
        ("PATCH", "/train", "GET, HEAD, POST"),
        ("DELETE", "/models/default", "GET, HEAD, PUT"),
        ("PUT", "/review/abc", "GET, HEAD, POST"),
        ("GET", "/classify", "POST"),
    ],
)
def test_an_undeclared_method_is_405_with_every_allowed_one_before_any_key(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json()["detail"] == f"{method} is not allowed on {path}; allowed: {allowed}"


def test_paths_no_operation_declares_are_left_to_routing(client: TestClient) -> None:
    assert client.get("/no-such-path").status_code == 404
    assert client.get("/ui/review").status_code == 200


@pytest.mark.parametrize("path", ["/ui", "/ui/train", "/ui/review"])
def test_pages_say_what_they_may_load_and_that_no_site_may_frame_them(client: TestClient, path: str) -> None:
    headers = client.get(path).headers
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]


def keyed_operations(protect_reads: bool) -> list[tuple[str, str]]:
    """Every operation whose route checks a key as the service is configured: those that FastAPI's
    document, made from the routes' dependencies alone, gives a security scheme, less the reads when
    reads are open."""
    app = create_app(api_settings(Path("/nonexistent")))
    # Not the served document: that one marks open reads by the gate's own rule.
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    reads = {"require_read_access"}
    operations = []
    for route in api_routes(app):
        names = {getattr(dependency.call, "__name__", "") for dependency in route.dependant.dependencies}
        checks = {name for name in names if name.startswith("require_")}
        path = str(route.path_format)
        for method in route.methods or ():
            if not document["paths"].get(path, {}).get(method.lower(), {}).get("security"):
                continue
            if protect_reads or checks - reads:
                operations.append((str(method), path))
    return operations


@pytest.mark.parametrize("protect_reads", [False, True])
def test_every_operation_that_checks_a_key_is_refused_by_the_gate_before_its_body(
    settings: Settings, protect_reads: bool
) -> None:
    """A route missing from the gate's rules would read its whole body before refusing a request
    without a key; the gate derives its rules from the routes, and this holds it to every one."""
    settings.protect_reads = protect_reads
    headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"600000000")]
    operations = keyed_operations(protect_reads)
    assert {("POST", "/train"), ("PUT", "/models/default"), ("GET", "/review")} <= set(operations)
    assert (("POST", "/classify") in operations) == protect_reads
    for method, template in operations:
        path = re.sub(r"{[^}]+}", "0123456789abcdef0123456789abcdef", template)
        sent = run_gate(settings, method, path, headers)
        assert sent[0]["status"] == 401, (method, template)


def test_the_gate_rules_follow_the_routes_dependencies(settings: Settings) -> None:
    app = create_app(settings)
    assert needed_role(app, "POST", "/train", protect_reads=False) == "train"
    assert needed_role(app, "DELETE", "/models/se_resnet50/v1", protect_reads=False) == "admin"
    assert needed_role(app, "GET", "/train/0123", protect_reads=False) is None
    assert needed_role(app, "GET", "/train/0123", protect_reads=True) == "read"
    assert needed_role(app, "HEAD", "/models", protect_reads=True) == "read"
    assert needed_role(app, "GET", "/health", protect_reads=True) is None
    assert needed_role(app, "POST", "/no-such-route", protect_reads=True) is None
    starting = {rule.path for rule in access_rules(app) if rule.starts_job}
    assert starting == {"/train", "/explain/batch"}


def test_a_route_with_a_path_converter_is_matched_as_routing_matches_it(settings: Settings) -> None:
    app = create_app(settings)

    @app.post("/test-files/{name:path}", dependencies=[AdminAccess])
    def upload_file(name: str) -> None:
        return None

    app.state.access_rules = None  # made again with the new route
    assert needed_role(app, "POST", "/test-files/a/b/c", protect_reads=False) == "admin"
