import asyncio
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.settings import Settings
from tests.app.conftest import API_KEY


def chunks(total: int, size: int = 1 << 16) -> Iterator[bytes]:
    yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    for _ in range(total // size):
        yield b"\0" * size


def test_a_chunked_upload_with_no_length_is_cut_off_at_the_limit(
    client: TestClient, settings: Settings
) -> None:
    limit = settings.max_upload_bytes * settings.max_files_per_request + (1 << 20)
    response = client.post(
        "/classify",
        content=chunks(limit + (4 << 20)),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert "content-length" not in {key.lower() for key in response.request.headers}
    assert response.status_code == 413
    assert f"over the limit of {limit} bytes" in response.json()["detail"]


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

    scope = {
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
