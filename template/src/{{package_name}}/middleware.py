"""Pure ASGI middleware: no BaseHTTPMiddleware, so streaming and back-pressure are untouched."""

import logging
import time

from starlette.datastructures import MutableHeaders
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
