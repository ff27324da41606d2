"""The gate every request passes before its body is read: the API key of the routes that need one,
and the body's size, declared or streamed.

A pure ASGI middleware, so that it sees the body as it arrives: a chunked upload with no
``Content-Length`` is cut off at the route's limit instead of being spooled to disk whole, and a request
without a valid key to a state-changing route is answered before any of its body is read.
"""

import asyncio
import re
from typing import Any

from fastapi import HTTPException, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access import access_of
from app.parts import FilePartSizes
from app.quotas import check_job_quota
from app.security import API_KEY_HEADER, check_api_key
from core.settings import Settings


class BodyTooLargeError(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE, f"request body is over the limit of {limit} bytes"
        )


class BodyTimeoutError(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            status.HTTP_408_REQUEST_TIMEOUT, f"no part of the request body arrived for {seconds:g} s"
        )


class FileTooLargeError(HTTPException):
    def __init__(self, name: str, limit: int) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, f"{name}: larger than the limit of {limit} bytes")


def file_limit(starts_job: bool, settings: Settings) -> int:
    """The largest file an operation takes: a job's archive, or one photo."""
    return settings.max_archive_upload_bytes if starts_job else settings.max_upload_bytes


def body_limit(starts_job: bool, settings: Settings) -> int:
    """The largest request body an operation may receive: its files' limits plus room for the form."""
    if starts_job:
        return settings.max_archive_upload_bytes + (1 << 20)
    return settings.max_upload_bytes * settings.max_files_per_request + (1 << 20)


def _declared_methods(app: Any) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each path of ``app``'s OpenAPI document, as a pattern, with the methods declared on it (HEAD
    where GET is, as routing allows); built once, kept on the app."""
    cached: list[tuple[re.Pattern[str], frozenset[str]]] | None = getattr(app.state, "declared_methods", None)
    if cached is not None:
        return cached
    declared = []
    for path, operations in app.openapi().get("paths", {}).items():
        methods = {method.upper() for method in operations}
        if "GET" in methods:
            methods.add("HEAD")
        declared.append((compile_path(path)[0], frozenset(methods)))
    app.state.declared_methods = declared
    return declared


def methods_not_routed(scope: Scope) -> list[str] | None:
    """The methods declared on the request's path, when its method is not one of them (None when it is,
    or the document has no such path: routing answers those). Every operation of the path counts:
    routing itself names only the first matching route's in ``Allow``."""
    app = scope.get("app")
    if app is None or not hasattr(app, "openapi"):
        return None
    allowed: set[str] = set()
    for pattern, methods in _declared_methods(app):
        if pattern.match(scope["path"]):
            if scope["method"] in methods:
                return None
            allowed |= methods
    return sorted(allowed) if allowed else None


class RequestGate:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        path, method = scope["path"], scope["method"]
        operation = access_of(scope["app"], method, path) if "app" in scope else None
        starts_job = operation is not None and operation.starts_job
        limit = body_limit(starts_job, self.settings)
        try:
            allowed = methods_not_routed(scope)
            if allowed is not None:
                # Before the key: a method no route declares is the client's mistake whoever sends it.
                raise HTTPException(
                    status.HTTP_405_METHOD_NOT_ALLOWED,
                    f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}",
                    headers={"Allow": ", ".join(allowed)},
                )
            protect_reads = self.settings.protect_reads
            role = None if operation is None else operation.needed_role(protect_reads=protect_reads)
            if role is not None:
                key = check_api_key(self.settings, headers.get(API_KEY_HEADER.lower()), role)
                if starts_job:
                    # A key over its quota is told so before it sends an upload for nothing.
                    jobs = scope["app"].state.jobs
                    await run_in_threadpool(check_job_quota, jobs, self.settings, key.name)
            declared = headers.get("content-length", "")
            if declared.isdecimal() and int(declared) > limit:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"request body of {declared} bytes is over the limit of {limit} bytes",
                )
        except HTTPException as error:
            # A body the client is still sending is never read: the connection closes after the answer,
            # instead of waiting for the rest of it.
            pending = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
            await self._refuse(error, scope, receive, send, close=pending)
            return
        received = 0
        over = False
        refusal: HTTPException = BodyTooLargeError(limit)
        answered = False  # the app began its response, or the 413 was sent
        largest_file = file_limit(starts_job, self.settings)
        # A body no larger than the file limit cannot hold a file over it (the server reads no more than
        # a body declares): the photos of a classification are not parsed twice for nothing.
        small = declared.isdecimal() and int(declared) <= largest_file
        parts = None if small else FilePartSizes.for_request(headers.get("content-type", ""), largest_file)

        body_done = False

        async def counted() -> Message:
            nonlocal received, over, refusal, body_done
            if over:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()  # past the body the app only listens for the client leaving
            try:
                message = await asyncio.wait_for(receive(), self.settings.body_timeout_seconds)
            except TimeoutError:
                # A client that stopped sending holds a descriptor and a request slot: let both go.
                refusal, over = BodyTimeoutError(self.settings.body_timeout_seconds), True
                return {"type": "http.disconnect"}
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                too_large = parts.feed(body) if parts is not None else None
                if too_large is not None:
                    refusal = FileTooLargeError(too_large, largest_file)
                if received > limit or too_large is not None:
                    # The rest is never read (nor this chunk passed on): to the route the client has
                    # gone, and what it answers is replaced by the 413 below.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def answer(message: Message) -> None:
            nonlocal answered
            if not over:
                answered = answered or message["type"] == "http.response.start"
                await send(message)
            elif not answered:
                answered = True
                await self._refuse(refusal, scope, receive, send, close=True)

        await self.app(scope, counted, answer)
        if over and not answered:
            await self._refuse(refusal, scope, receive, send, close=True)

    @staticmethod
    async def _refuse(
        error: HTTPException, scope: Scope, receive: Receive, send: Send, *, close: bool = False
    ) -> None:
        """Answer ``error`` as the API's errors look: ``{"detail": ...}`` with its status; with
        ``close``, the connection closes after it (the rest of the body is not read)."""
        headers: dict[str, Any] = dict(error.headers or {})
        if close:
            headers["Connection"] = "close"
        response = JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=headers)
        await response(scope, receive, send)
