"""Pure ASGI middleware: no BaseHTTPMiddleware, so streaming and back-pressure are untouched."""

import json
import logging
import time
from http import HTTPStatus

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .timing import RequestTimings, current_timings

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

        try:
            await self.app(scope, receive, send_with_timing)
        finally:
            elapsed = time.perf_counter() - start
            if elapsed >= self.slow_request_seconds:
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
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message["headers"]).get("content-type", "")
                if message["status"] >= 400 and not content_type.startswith("application/json"):
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
