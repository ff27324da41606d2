"""The server's own bounds on connections: a deadline for a request's header, a connection limit that
fits the open-file limit, and floods of refusals logged once per interval."""

import logging
import resource

import pytest

from app.connections import (
    RESERVED_DESCRIPTORS,
    EveryInterval,
    connection_limit,
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
