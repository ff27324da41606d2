"""The server's own bounds on connections: a deadline for a request's header, a connection limit that
fits the open-file limit, and floods of refusals logged once per interval."""

import asyncio
import logging
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from app.connections import (
    RESERVED_DESCRIPTORS,
    EveryInterval,
    connection_limit,
    header_deadline_protocol,
    open_descriptor_limit,
    quiet_floods,
)


def test_the_connection_limit_leaves_descriptors_for_the_process_itself() -> None:
    assert connection_limit(16_000, 20_000) == 16_000
    assert connection_limit(16_000, 4_096) == 4_096 - RESERVED_DESCRIPTORS
    assert connection_limit(16_000, 256) == 192  # a quarter kept
    assert connection_limit(16_000, 20) == 16  # never so few that every request is refused
    assert connection_limit(5, 20_000) == 5


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, before[1]), before[1]))
        assert open_descriptor_limit() == before[1]
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == before[1]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), None)


def test_a_flood_of_one_refusal_is_logged_once_per_interval_with_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("app.connections.time.monotonic", lambda: now[0])
    limiter = EveryInterval(("socket.accept() out of system resource",), seconds=10)
    flood = [record("socket.accept() out of system resource") for _ in range(1000)]
    assert sum(limiter.filter(line) for line in flood) == 1
    assert limiter.filter(record("something else")) is True  # other messages are untouched
    now[0] += 10
    after = record("socket.accept() out of system resource")
    assert limiter.filter(after) is True
    assert after.getMessage().endswith("(999 more like it not logged in 10 s)")


def test_floods_are_quieted_on_the_loggers_that_write_them() -> None:
    quiet_floods()
    for name in ("asyncio", "uvicorn.error"):
        assert any(isinstance(f, EveryInterval) for f in logging.getLogger(name).filters)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def serving(protocol: type[asyncio.Protocol]) -> Iterator[int]:
    """uvicorn on a free loopback port with ``protocol``, in a thread, until the block ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(hello, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_both_http_parsers_close_a_connection_whose_header_is_late_and_serve_one_that_is_not(
    parser: str,
) -> None:
    protocol = header_deadline_protocol(0.5, parser)
    assert protocol.__mro__[2].__module__.endswith(f"{parser}_impl")
    with serving(protocol) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            silent.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half a header, then nothing
            started = time.monotonic()
            assert silent.recv(100) == b""  # closed by the server
            assert 0.3 < time.monotonic() - started < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            for _ in range(2):  # kept alive: the second request on the same connection is served too
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"ok"):
                    answer += client.recv(1000)
                assert answer.startswith(b"HTTP/1.1 200")


def test_an_unknown_http_parser_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown HTTP parser 'picohttp'"):
        header_deadline_protocol(1.0, "picohttp")
