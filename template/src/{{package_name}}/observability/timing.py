"""Per-request timing: one mutable record per request, reachable from anywhere via a contextvar.

``TimingMiddleware`` opens a record; the database layer adds every statement's duration to it.
Tasks started inside a request (``asyncio.gather``, background tasks) copy the context, so they
add to the same record.
"""

import asyncio
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..middleware import append_headers

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestTimings:
    db_seconds: float = 0.0
    db_statements: int = 0

    def add_statement(self, seconds: float) -> None:
        self.db_seconds += seconds
        self.db_statements += 1


current_timings: ContextVar[RequestTimings | None] = ContextVar("current_timings", default=None)


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
                db_ms, queries = timings.db_seconds * 1000, timings.db_statements
                server_timing = (
                    f'app;dur={elapsed * 1000:.1f}, db;dur={db_ms:.1f};desc="queries={queries}"'
                )
                append_headers(
                    message,
                    (b"x-process-time", b"%.6f" % elapsed),
                    (b"server-timing", server_timing.encode()),
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
