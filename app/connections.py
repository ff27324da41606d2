"""What the API's server does with connections before a request reaches the application.

uvicorn gives a new connection all the time it likes to send its request's header, and logs each
refused accept and each request past its concurrency limit. A client that opens thousands of
connections and sends nothing (or half a header) would hold them all, and fill the log. Here: a
deadline for each request's header, a connection limit that fits the process's file descriptors, and
one log line per kind of refusal per interval, with a count of those not logged.
"""

import asyncio
import importlib.util
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

#: Descriptors kept for what is not a client's connection: model files, Redis, logs, the job index.
RESERVED_DESCRIPTORS = 512


class _HeaderDeadline:
    """Closes a connection whose request header has not arrived in full ``header_seconds`` after the
    connection was made or its previous response was sent: mixed into one of uvicorn's HTTP protocols,
    which calls :meth:`_header_in` once a request's header has been parsed."""

    header_seconds: float
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        self._arm()  # before the next pipelined request, which disarms it again
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _header_in(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a request's header is in: the body has a timeout of its own

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_seconds, self._header_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()


def header_deadline_protocol(seconds: float, parser: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with a deadline of ``seconds`` for each request's header. ``parser``:
    "httptools" (llhttp, in C), "h11" (pure Python), or "auto": httptools where it is installed, as
    uvicorn chooses itself. httptools costs the server about a third less CPU a request
    (docs/PERFORMANCE.md, "The request path")."""
    if parser == "auto":
        parser = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    if parser == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class HttpToolsWithHeaderDeadline(_HeaderDeadline, HttpToolsProtocol):
            header_seconds = seconds

            def on_headers_complete(self) -> None:
                super().on_headers_complete()
                self._header_in()

        return HttpToolsWithHeaderDeadline
    if parser == "h11":

        class H11WithHeaderDeadline(_HeaderDeadline, H11Protocol):
            header_seconds = seconds

            def handle_events(self) -> None:
                super().handle_events()
                self._header_in()

        return H11WithHeaderDeadline
    raise ValueError(f"unknown HTTP parser {parser!r}: httptools, h11 or auto")


#: What the soft limit is raised to where the hard limit is infinite (as macOS has it).
UNLIMITED_TARGET = 65_536


def open_descriptor_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (or to :data:`UNLIMITED_TARGET`
    where that is infinite); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.warning("could not raise the open-file limit from %d to %d", soft, target)
    return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


#: The fewest connections served at once: uvicorn counts the one asking, so 1 would refuse every request.
MIN_CONNECTIONS = 16


def connection_limit(wanted: int, descriptors: int) -> int:
    """``wanted`` connections, or fewer where the process could not open them all beside its own files
    (a quarter of a small limit is kept for those, at most :data:`RESERVED_DESCRIPTORS`)."""
    reserved = min(RESERVED_DESCRIPTORS, descriptors // 4)
    return min(wanted, max(MIN_CONNECTIONS, descriptors - reserved))


class EveryInterval(logging.Filter):
    """Lets one record of each listed message through per ``seconds``; the next one that passes says
    how many were held back meanwhile."""

    def __init__(self, messages: tuple[str, ...], seconds: float) -> None:
        super().__init__()
        self.messages, self.seconds = messages, seconds
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        kind = next((message for message in self.messages if text.startswith(message)), None)
        if kind is None:
            return True
        now = time.monotonic()
        if now - self._last.get(kind, -self.seconds) < self.seconds:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it not logged in {self.seconds:g} s)"
            record.args = ()
        return True


#: Logged per refused accept or request by asyncio and uvicorn: a flood of connections floods the log.
FLOODING_MESSAGES = ("socket.accept() out of system resource", "Exceeded concurrency limit.")


def quiet_floods(seconds: float = 10.0) -> None:
    """At most one line per :data:`FLOODING_MESSAGES` kind every ``seconds`` from asyncio and uvicorn."""
    limiter = EveryInterval(FLOODING_MESSAGES, seconds)
    for name in ("asyncio", "uvicorn.error"):
        logging.getLogger(name).addFilter(limiter)


def server_options(header_timeout_s: float, max_connections: int) -> dict[str, Any]:
    """uvicorn's options for the API: the protocol with a header deadline, and the connection limit
    that this process's descriptors allow."""
    limit = connection_limit(max_connections, open_descriptor_limit())
    if limit < max_connections:
        logger.warning(
            "serving at most %d connections at once: the process may open too few files for the %d "
            "asked (raise its limit, ulimit -n)",
            limit,
            max_connections,
        )
    return {"http": header_deadline_protocol(header_timeout_s), "limit_concurrency": limit}
