"""Request ids and the access log: one pure ASGI middleware, the outermost one.

Every request gets an id: the client's ``X-Request-ID`` when it is a sane token, a fresh uuid4
otherwise. It is returned in the response's ``X-Request-ID`` header and stamped on every log line
written while the request runs (see ``logs.py``), so one grep finds all of a request's lines.
"""

import logging
import re
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import internal_error
from .logs import current_request_id

REQUEST_ID_HEADER = "X-Request-ID"
# Letters, digits and ._- only: the id goes into log lines and headers, never anything else.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

access_logger = logging.getLogger(f"{__package__}.access")

# An unmatched request's path is logged as sent, cut to this many characters: enough to see what
# a client asked for, bounded whatever it sent.
LOGGED_PATH_CHARS = 200
# FastAPI's own pages, plain Starlette routes that leave no route in the scope.
DOCS_URL_ATTRIBUTES = ("openapi_url", "docs_url", "redoc_url", "swagger_ui_oauth2_redirect_url")

# Called once per request with method, route template, status and seconds (the metrics).
RequestObserver = Callable[[str, str, int, float], None]


def route_template(scope: Scope) -> str:
    """The matched route's path format (``/api/v1/projects/{project_id}``), ``unmatched`` when
    no route matched: a bounded value, unlike the raw path. Read it after the app has run.

    FastAPI (0.165+) keeps included routers whole, so ``scope["route"]`` is the route as its
    APIRouter declared it, without the ``include_router`` prefix; the full template is in the
    route context FastAPI keeps in the scope (what its own telemetry reports as ``http.route``).
    """
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


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if VALID_REQUEST_ID.fullmatch(candidate) else None
    return None


class AccessLogMiddleware:
    """Assigns the request id and writes one access log line per request: method, route
    template, status and duration (to the end of the response body). ``observe`` gets the same
    facts for the metrics, so one middleware times each request once."""

    def __init__(self, app: ASGIApp, *, observe: RequestObserver | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        token = current_request_id.set(request_id)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive, send_with_request_id)
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
            access_logger.log(
                logging.INFO if error is None else logging.ERROR,
                "%s %s %d %.1f ms",
                scope["method"],
                shown,
                status,
                duration_ms,
                extra={**facts, "status": status, "duration_ms": round(duration_ms, 2)},
                # An unhandled error's traceback goes on the line that carries the request id.
                exc_info=error,
            )
            current_request_id.reset(token)
