"""Pure ASGI middleware: no BaseHTTPMiddleware, so streaming and back-pressure are untouched."""

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from http import HTTPStatus

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .observability.timing import RequestTimings, current_timings

logger = logging.getLogger(__name__)


class TimingMiddleware:
    """Adds ``X-Process-Time`` (seconds) and ``Server-Timing`` (app and database time, statement
    count) to every HTTP response, and logs requests slower than ``slow_request_ms``.

    The headers leave with the first byte of the response, so for a streamed response they cover
    the work done before streaming started; the slow-request log covers the whole response.
    """

    def __init__(self, app: ASGIApp, *, slow_request_ms: float) -> None:
        self.app = app
        self.slow_request_seconds = slow_request_ms / 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timings = RequestTimings()
        token = current_timings.set(timings)
        start = time.perf_counter()
        status = 500

        async def send_with_timing(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = time.perf_counter() - start
                headers = MutableHeaders(scope=message)
                headers.append("X-Process-Time", f"{elapsed:.6f}")
                db_ms, queries = timings.db_seconds * 1000, timings.db_statements
                headers.append(
                    "Server-Timing",
                    f'app;dur={elapsed * 1000:.1f}, db;dur={db_ms:.1f};desc="queries={queries}"',
                )
            await send(message)

        cancelled = False
        try:
            await self.app(scope, receive, send_with_timing)
        except asyncio.CancelledError:
            cancelled = True  # cut by the server's shutdown: the access log says so
            raise
        finally:
            elapsed = time.perf_counter() - start
            if elapsed >= self.slow_request_seconds and not cancelled:
                logger.warning(
                    "slow request: %s %s -> %s in %.1f ms (db %.1f ms, %d queries)",
                    scope["method"],
                    scope["path"],
                    status,
                    elapsed * 1000,
                    timings.db_seconds * 1000,
                    timings.db_statements,
                )
            current_timings.reset(token)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        # Connection: close, so the server stops reading the rest of the body off the socket.
        super().__init__(
            413, f"request body exceeds the limit of {limit} bytes", {"Connection": "close"}
        )


class BodyLimitMiddleware:
    """Refuses a request body over ``max_bytes`` with a JSON 413: before reading any of it when
    its Content-Length says so, else (chunked) as soon as the bytes received pass the limit,
    reading no further. A path under one of the ``limits`` prefixes takes the limit given there
    (uploads, streamed to disk, have a larger one), or whose path a pattern there matches."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, limits: Mapping[str | re.Pattern[str], int]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = next(
            (
                size
                for prefix, size in self.limits.items()
                if (path.startswith(prefix) if isinstance(prefix, str) else prefix.fullmatch(path))
            ),
            self.max_bytes,
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            refused = BodyTooLarge(limit)
            response = JSONResponse(
                {"detail": refused.detail}, refused.status_code, headers=refused.headers
            )
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the app's read of the body: its exception handler answers.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, receive_within_limit, send)


class JsonErrorsMiddleware:
    """Rewrites an error answered in anything but JSON (Starlette's own plain-text 400 and 416
    for a Range a file cannot satisfy) as ``{"detail": ...}``, keeping its status and headers."""

    # A plain-text 4xx keeps its own words when they are this short; else the status phrase.
    MAX_DETAIL_BYTES = 200

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        words: bytes | None = None  # the body, while it may still become the detail

        async def send_json_errors(message: Message) -> None:
            nonlocal held, words
            # Headers are parsed only for errors: a 2xx or 3xx passes untouched.
            if message["type"] == "http.response.start" and message["status"] >= 400:
                content_type = Headers(raw=message["headers"]).get("content-type", "")
                if not content_type.startswith("application/json"):
                    held = message
                    plain = content_type.startswith("text/plain") and message["status"] < 500
                    words = b"" if plain else None
                    return
            elif message["type"] == "http.response.body" and held is not None:
                if words is not None:
                    words += message.get("body", b"")
                    if len(words) > self.MAX_DETAIL_BYTES:
                        words = None
                if not message.get("more_body", False):
                    await _send_as_json(send, held, words)
                return
            await send(message)

        await self.app(scope, receive, send_json_errors)


async def _send_as_json(send: Send, start: Message, words: bytes | None) -> None:
    detail = (words or b"").decode("utf-8", errors="replace").strip()
    if not detail:
        try:
            detail = HTTPStatus(start["status"]).phrase
        except ValueError:  # a status of no standard (499)
            detail = "Error"
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = MutableHeaders(raw=list(start["headers"]))
    headers["content-type"] = "application/json"
    headers["content-length"] = str(len(body))
    await send({**start, "headers": headers.raw})
    await send({"type": "http.response.body", "body": body})
