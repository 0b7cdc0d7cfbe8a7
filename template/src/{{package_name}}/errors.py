"""One error shape: ``{"detail": "..."}`` (ErrorMessage) for every error but 422, whose
``detail`` is a list of ValidationError. Every status a route answers is documented with it;
what no route answers in that shape is made so on its way out (observability/request_log.py for
unhandled errors, middleware.py for Starlette's own plain-text answers)."""

import json
from collections.abc import Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Match

from .schemas import ErrorMessage

_DESCRIPTIONS = {
    400: "The body could not be parsed",
    401: "Not signed in, or the token is invalid or expired (WWW-Authenticate: Bearer)",
    403: "Signed in, but not the owner",
    404: "Not found",
    409: "Conflicts with an existing row",
    413: "The body is over the size limit",
    415: "The Content-Type is not one the route takes",
    416: "The Range is not satisfiable",
    429: "Too many requests (rate limit, or sign-in lockout): retry after Retry-After seconds",
    502: "The upstream failed",
    503: "The database is unavailable or busy: retry after Retry-After seconds",
    504: "The upstream timed out",
}
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_WITHOUT_BODY = {
    206: "Partial content, for a Range request",
    304: "Not modified: If-None-Match matched the ETag",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        if status in _WITHOUT_BODY:
            responses[status] = {"description": _WITHOUT_BODY[status]}
        else:
            responses[status] = {"model": ErrorMessage, "description": _DESCRIPTIONS[status]}
    return responses


def internal_error(request_id: str) -> Response:
    """The answer to an unhandled error: the error shape and the request id to quote, nothing of
    the exception (its text may name hosts, users, SQL)."""
    detail = f"internal server error: quote request id {request_id} when reporting it"
    return JSONResponse({"detail": detail}, status_code=500)


def shutting_down() -> Response:
    """The answer to a request the server's shutdown cut before its response started."""
    return JSONResponse(
        {"detail": "the service is shutting down: retry, another instance will answer"},
        status_code=503,
        headers={"Retry-After": "1", "Connection": "close"},
    )


def invalid(loc: Sequence[str | int], message: str) -> RequestValidationError:
    """A 422 for a value that is well-formed but refers to nothing, shaped like Pydantic's."""
    return RequestValidationError([{"type": "value_error", "loc": tuple(loc), "msg": message}])


def _public(error: dict[str, Any]) -> dict[str, Any]:
    # No "input": it may be a password, or anything else the client should not see echoed.
    public = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
    if "ctx" in error:
        public["ctx"] = error["ctx"]
    return public


async def request_validation_error(_request: Request, exc: Exception) -> Response:
    """FastAPI's 422, minus the submitted input, and encodable whatever the client sent: a lone
    surrogate in a key or message becomes "?" instead of a UnicodeEncodeError (a 500)."""
    assert isinstance(exc, RequestValidationError)
    body = json.dumps(
        {"detail": [_public(error) for error in exc.errors()]},
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return Response(
        body.encode("utf-8", errors="replace"), status_code=422, media_type="application/json"
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at the request's path, asked of the router itself."""
    # Without FastAPI's per-request routing state, which matching writes to.
    scope = {key: value for key, value in request.scope.items() if key != "fastapi"}
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]


async def method_not_allowed(request: Request, _exc: Exception) -> Response:
    """405 whose Allow lists every method of the path: Starlette names only the methods of the
    first route whose path matched (GET /projects/{id} and PATCH /projects/{id} are two routes)."""
    allow = ", ".join(allowed_methods(request))
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})
