"""uvicorn's httptools HTTP/1.1 protocol with the bounds a server on the internet needs.

What uvicorn offers is used as it is: ``timeout_keep_alive`` (``APP_KEEP_ALIVE_SECONDS``) closes
a connection idle after a response. The rest is added here, in the protocol, because nothing in
uvicorn's httptools protocol does it and an ASGI middleware is too late (the server has already
taken the connection, and buffered the headers, when the app sees a request):

- Request headers are bounded in bytes (``APP_MAX_HEADER_BYTES``): httptools keeps every byte (64
  MB headers were answered 200; four at once took the process from 291 to 558 MB). uvicorn's h11
  protocol has a bound but answers a generic 400 and parses in pure Python. Over it: 431.
- A request's line and headers must arrive within ``APP_HEADER_TIMEOUT_SECONDS`` of the
  connection's start (or of the previous response), and its body may pause for at most
  ``APP_BODY_TIMEOUT_SECONDS`` between two reads (a pause the server makes itself, reading no
  more while the app catches up or before its "100 Continue", does not count): 408, connection
  closed. A connection that
  sent nothing is closed without a word. Without them idle, half-header and half-body
  connections stayed open forever, each holding a file descriptor.
- At most ``APP_MAX_CONNECTIONS`` connections at once per process (0: three quarters of the
  process's file descriptor limit, so that accept() never runs out of descriptors, which took
  the service down silently under 2,000 slow clients with ``ulimit -n 1024``). A connection
  over it is answered 503 with ``Retry-After`` and closed; shedding is logged (a warning when
  it starts, then at most one every 10 s with the count). uvicorn's ``limit_concurrency``
  answers 503 too, but only once a request's headers are complete: a slow client is never
  counted before that.
"""

import asyncio
import json
import logging
import resource
import time
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import AppSettings, get_settings

logger = logging.getLogger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"
_SHED_LOG_SECONDS = 10.0
_REASONS = {
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def max_connections(settings: AppSettings) -> int:
    """``APP_MAX_CONNECTIONS``, or three quarters of the file descriptor limit (the rest for the
    database pool, Redis, files and the listening socket)."""
    if settings.max_connections:
        return settings.max_connections
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(1, soft * 3 // 4)


class _Shedding:
    """Connections refused at the limit, logged when it starts and then every 10 s at most."""

    def __init__(self) -> None:
        self.refused = 0
        self.logged_at = -_SHED_LOG_SECONDS

    def refuse(self, open_connections: int, limit: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= _SHED_LOG_SECONDS:
            logger.warning(
                "at the connection limit (%d open, APP_MAX_CONNECTIONS %d): %d new connections"
                " answered 503 since the last line",
                open_connections,
                limit,
                self.refused,
            )
            self.logged_at = now
            self.refused = 0


_shedding = _Shedding()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings().app
        self._max_header_bytes = settings.max_header_bytes
        self._header_timeout = settings.header_timeout_seconds
        self._body_timeout = settings.body_timeout_seconds
        self._max_connections = max_connections(settings)
        self._header_bytes = 0
        self._in_headers = True
        self._in_body = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            _shedding.refuse(len(self.connections), self._max_connections)
            self._answer(503, "too many connections: retry shortly", retry_after=1)
            return
        self._arm(self._header_timeout, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            end = data.find(_END_OF_HEADERS)
            self._header_bytes += len(data) if end == -1 else end + len(_END_OF_HEADERS)
            if self._header_bytes > self._max_header_bytes:
                self._answer(431, f"request headers exceed {self._max_header_bytes} bytes")
                return
        elif self._in_body:
            self._arm(self._body_timeout, self._body_timed_out)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._in_body = True
        self._arm(self._body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._disarm()
        # The next bytes on this keep-alive connection start the next request's headers.
        self._in_headers = True
        self._header_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Waiting for the next request (uvicorn's keep-alive timeout runs beside this), unless
        # a pipelined one has started already.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm(self._header_timeout, self._headers_timed_out)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handed_over(self) -> bool:
        # A WebSocket upgrade gives the transport to another protocol: its timeouts are its own.
        return self.transport.get_protocol() is not self

    def _headers_timed_out(self) -> None:
        self._timer = None
        if self._handed_over():
            return
        if self._header_bytes == 0:
            self.transport.close()  # nothing of a request: an idle connection
        else:
            self._answer(408, "request headers not received in time")

    def _body_timed_out(self) -> None:
        self._timer = None
        if self._handed_over():
            return
        cycle = self.cycle
        # The app is behind, not the client: reading paused while it catches up, or the
        # client waits for "100 Continue", sent when the app first reads the body.
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self._arm(self._body_timeout, self._body_timed_out)
            return
        if cycle is not None and not cycle.response_started:
            # The access log's 408 (observability/request_log.py): the app sees only a disconnect.
            cast(dict[str, Any], self.scope)["request_timed_out"] = True
            self._answer(408, "request body not received in time")
        else:
            self.transport.close()

    def _answer(self, status: int, detail: str, retry_after: int | None = None) -> None:
        """An answer written by the server itself, and the connection closed."""
        transport: asyncio.Transport = self.transport
        if transport.is_closing():
            return
        body = json.dumps({"detail": detail}).encode()
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(body)}\r\n"
        if retry_after is not None:
            head += f"retry-after: {retry_after}\r\n"
        transport.write(head.encode() + b"connection: close\r\n\r\n" + body)
        transport.close()
