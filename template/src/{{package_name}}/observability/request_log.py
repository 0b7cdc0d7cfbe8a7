"""Request ids and the access log: one pure ASGI middleware, the outermost one.

Every request gets an id: the client's ``X-Request-ID`` when it is a sane token, 128 fresh
random bits otherwise (``new_request_id``). It is returned in the response's ``X-Request-ID``
header and stamped on every log line written while the request runs (see ``logs.py``), so one
grep finds all of a request's lines.
"""

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import internal_error, shutting_down
from ..middleware import append_headers
from .logs import current_request_id, sole_json_handler

REQUEST_ID_HEADER = b"x-request-id"
# Letters, digits and ._- only: the id goes into log lines and headers, never anything else.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# "<service package>.access": the name log filters and dashboards use.
access_logger = logging.getLogger(f"{__name__.partition('.')[0]}.access")

# An unmatched request's path is logged as sent, cut to this many characters: enough to see what
# a client asked for, bounded whatever it sent.
LOGGED_PATH_CHARS = 200
# How many of its innermost calls a request that outlasted the shutdown's wait is logged with.
STUCK_CALLS = 6
# FastAPI's own pages, plain Starlette routes that leave no route in the scope.
DOCS_URL_ATTRIBUTES = ("openapi_url", "docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")

# The scope entry where the response cache leaves the route template of an answer it served
# without routing.
ROUTE_TEMPLATE = "route_template"

# Called once per request with method, route template, status and seconds (the metrics).
RequestObserver = Callable[[str, str, int, float], None]


def route_template(scope: Scope) -> str:
    """The matched route's path format (``/api/v1/projects/{project_id}``), ``unmatched`` when
    no route matched: a bounded value, unlike the raw path. Read it after the app has run.

    FastAPI (0.165+) keeps included routers whole, so ``scope["route"]`` is the route as its
    APIRouter declared it, without the ``include_router`` prefix; the full template is in the
    route context FastAPI keeps in the scope (what its own telemetry reports as ``http.route``).
    """
    kept = scope.get(ROUTE_TEMPLATE)  # an answer of the response cache (response_cache.py)
    if kept is not None:
        return str(kept)
    context = scope.get("fastapi", {}).get("effective_route_context")
    for candidate in (
        getattr(getattr(context, "starlette_route", None), "path_format", None),
        getattr(context, "path_format", None),
        getattr(scope.get("route"), "path_format", None),
    ):
        if isinstance(candidate, str) and candidate:
            return candidate
    # Their paths have no parameters: each path is its own template.
    app = scope.get("app")
    if scope.get("endpoint") is not None and scope["path"] in {
        getattr(app, name, None) for name in DOCS_URL_ATTRIBUTES
    }:
        return str(scope["path"])
    return "unmatched"


def unmatched_path(scope: Scope) -> str:
    """The path as the client sent it, without the query string, bounded and printable:
    percent-encoded as on the wire (bytes outside printable ASCII as %XX), at most
    ``LOGGED_PATH_CHARS`` characters, then ``...``."""
    raw = scope.get("raw_path") or scope["path"].encode()
    path = quote(raw, safe="/%:@!$&'()*+,;=~")
    return path if len(path) <= LOGGED_PATH_CHARS else path[:LOGGED_PATH_CHARS] + "..."


def new_request_id() -> str:
    """32 hex digits of 128 random bits, as ``uuid.uuid4().hex`` reads. Not a secret (it is
    sent back and logged), so the random module serves it: 0.6 us against uuid4's 3.4 us here
    (a system call for the system's random source, then the UUID object), on every request. The
    random module reseeds itself in a forked worker, so workers never repeat each other's ids."""
    return f"{random.getrandbits(128):032x}"


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if VALID_REQUEST_ID.fullmatch(candidate) else None
    return None


class InFlight:
    """The requests the access log middleware has taken and not yet logged.

    The lifespan waits for them before it closes the pools: under uvicorn the requests still
    running at shutdown have been cancelled (the graceful timeout ran out) and are unwinding, an
    export handing back its connection, the access line being written. uvicorn closes the
    lifespan without waiting for them, and a worker process (``--workers``) ends right after
    it: its cut requests were never logged. One that outlasts the wait is a bug: ``stuck``
    says where each waits."""

    def __init__(self) -> None:
        self._requests: dict[asyncio.Task[Any] | None, tuple[Scope, str]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return len(self._requests)

    def enter(self, scope: Scope, request_id: str) -> None:
        self._requests[asyncio.current_task()] = (scope, request_id)
        self._idle.clear()

    def leave(self) -> None:
        self._requests.pop(asyncio.current_task(), None)
        if not self._requests:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()

    def stuck(self) -> list[str]:
        """Each request in flight, and the innermost calls it waits in (newest first)."""
        described = []
        for task, (scope, request_id) in self._requests.items():
            calls = " < ".join(reversed(_awaits(task)[-STUCK_CALLS:])) if task else "?"
            route = route_template(scope)
            if route == "unmatched":  # as the access line shows it
                route = f"unmatched {unmatched_path(scope)}"
            described.append(f"{scope['method']} {route} {request_id} waiting in {calls}")
        return described


def _awaits(task: asyncio.Task[Any]) -> list[str]:
    """The coroutines ``task`` is suspended in, outermost first, down to the first await that
    is not a coroutine's (a future, an async generator's step). ``Task.get_stack`` gives only
    the outermost one (Python 3.11), not what it awaits."""
    calls = []
    awaited: Any = task.get_coro()
    while (frame := getattr(awaited, "cr_frame", None)) is not None:
        code = frame.f_code
        where = "/".join(Path(code.co_filename).parts[-2:])  # package/module.py
        calls.append(f"{code.co_name} ({where}:{frame.f_lineno})")
        awaited = awaited.cr_await
    return calls


class AccessLogMiddleware:
    """Assigns the request id and writes one access log line per request: method, route
    template, status and duration (to the end of the response body). ``observe`` gets the same
    facts for the metrics, so one middleware times each request once.

    A request still running when the server's graceful shutdown runs out of time (``serve
    --graceful-timeout``) is cancelled by uvicorn: the only thing that cancels a request's task
    from outside. Its line says so, as a warning: "cut by shutdown", with the status and the
    body bytes handed to the server so far (a long export cut short is not a 200 that went
    well). A request whose response had not started is answered 503 with ``Retry-After``, the
    next instance will take it; uvicorn's traceback of the cancellation is left out of the log
    (logs.py).

    A client that leaves before its request is complete is logged 499 (nginx's "client closed
    request"), or 408 when the server timed its body out (http_protocol.py), without a traceback.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        observe: RequestObserver | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.app = app
        self.observe = observe
        self.in_flight = in_flight or InFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or new_request_id()
        token = current_request_id.set(request_id)
        self.in_flight.enter(scope, request_id)
        start = time.perf_counter()
        status = 500
        started = False
        body_bytes = 0

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, started, body_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                append_headers(message, (REQUEST_ID_HEADER, request_id.encode()))
            elif message["type"] == "http.response.body":
                body_bytes += len(message.get("body", b""))
            await send(message)

        error: Exception | None = None
        cut = ""
        try:
            await self.app(scope, receive, send_with_request_id)
        except ClientDisconnect:
            # The client left, or stalled mid-body and the server answered 408 (http_protocol.py),
            # before the request was complete: nothing for the app to answer, no error of ours.
            if not started:
                status = 408 if scope.get("request_timed_out") else 499
        except asyncio.CancelledError:
            cut = f"cut by shutdown after {body_bytes} body bytes"
            if not started:
                cut = "cut by shutdown before its response, answered 503"
                await shutting_down()(scope, receive, send_with_request_id)
            raise
        except Exception as exc:
            error = exc
            if started:
                raise  # too late for an answer: the server cuts the connection
            # Answered here, in the API's error shape and with the request id, and logged once
            # below: passed on, it would be Starlette's text/plain 500 and a second traceback.
            await internal_error(request_id)(scope, receive, send_with_request_id)
        finally:
            seconds = time.perf_counter() - start
            duration_ms = seconds * 1000
            route = route_template(scope)
            if self.observe is not None:
                self.observe(scope["method"], route, status, seconds)
            facts: dict[str, object] = {"method": scope["method"], "route": route}
            shown = route
            if route == "unmatched":
                facts["path"] = unmatched_path(scope)
                shown = f"unmatched {facts['path']}"
            level = logging.INFO if error is None else logging.ERROR
            line = "%s %s %d %.1f ms"
            if cut:
                level = logging.WARNING
                line = f"{line}, {cut}"
                facts.update(cut="shutdown", body_bytes=body_bytes)
            args = (scope["method"], shown, status, duration_ms)
            fields = {**facts, "status": status, "duration_ms": round(duration_ms, 2)}
            handler = sole_json_handler(access_logger, level) if level == logging.INFO else None
            if handler is not None:
                handler.write_json("INFO", access_logger.name, line % args, fields)
            else:
                # An unhandled error's traceback goes on the line that carries the request id.
                access_logger.log(level, line, *args, extra=fields, exc_info=error)
            current_request_id.reset(token)
            self.in_flight.leave()
