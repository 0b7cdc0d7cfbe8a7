"""Pure ASGI middleware guarding requests and shaping errors (no BaseHTTPMiddleware, so
streaming and back-pressure are untouched): the body limit and JSON error bodies. Timing, the
access log and metrics are in observability/; they add their headers with ``append_headers``."""

import json
import re
from collections.abc import Mapping
from http import HTTPStatus

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def append_headers(message: Message, *headers: tuple[bytes, bytes]) -> None:
    """Add ``headers`` (lowercase names, latin-1 values) to a response start ``message``: for the
    headers only a middleware sets. Every request pays it several times, so it builds one new
    list, where ``MutableHeaders(scope=message)`` copies the list and scans it per header."""
    message["headers"] = [*message.get("headers", ()), *headers]


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
