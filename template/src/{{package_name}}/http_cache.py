"""HTTP side of caching: ETag / If-None-Match, and what may be shared between callers.

Safe by construction: a body in the shared cache is the same for every caller (public data only);
a body that depends on the caller is stored, if at all, under a key naming the user id (never the
token), answered with ``Cache-Control: private``, and its ETag is bound to that user, so one
caller's ETag never earns another a 304. Errors (401, 403, 404) are raised by the loaders and
never stored. A request with other credentials (a cookie) bypasses the shared cache."""

import hashlib
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from .cache import Cache

# Every answer of these routes depends on Authorization: no cache on the way may hand one
# caller's answer to another (nor an anonymous answer to a signed-in caller).
VARY = "Authorization"


def is_private(request: Request) -> bool:
    """A request with credentials may get a personalized answer: never share it through the
    cache. Add any other identity-bearing header your service uses here."""
    return "authorization" in request.headers or "cookie" in request.headers


def etag_of(body: bytes, viewer: int | None = None) -> str:
    # Weak: gzip changes the bytes on the wire, not the representation. SHA-256 (128 bits of
    # it): CPUs hash it in hardware, ~3x faster than BLAKE2b here (4 vs 12 us for a 7 kB page),
    # and every cached hit pays it. A signed-in caller's ETag covers their id too.
    digest = hashlib.sha256(body)
    if viewer is not None:
        digest.update(b"\0viewer:%d" % viewer)
    return f'W/"{digest.hexdigest()[:32]}"'


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Does the client's ``If-None-Match`` name ``etag`` (weakly compared, or ``*``)?"""
    if not if_none_match:
        return False
    opaque = etag.removeprefix("W/")
    return any(
        candidate == "*" or candidate.removeprefix("W/") == opaque
        for candidate in (part.strip() for part in if_none_match.split(","))
    )


def etag_headers(body: bytes, *, private: bool, viewer: int | None) -> dict[str, str]:
    return {
        "ETag": etag_of(body, viewer),
        "Cache-Control": "private, no-cache" if private else "no-cache",
        "Vary": VARY,
    }


def json_answer(body: bytes, headers: dict[str, str], *, not_modified: bool) -> Response:
    """The one way an ETagged JSON answer is made: here, and by the response cache."""
    if not_modified:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def _answer(request: Request, body: bytes, headers: dict[str, str]) -> Response:
    if_none_match = request.headers.get("if-none-match")
    return json_answer(body, headers, not_modified=not_modified(if_none_match, headers["ETag"]))


def json_with_etag(
    request: Request, body: bytes, *, private: bool = False, viewer: int | None = None
) -> Response:
    """The JSON ``body`` with an ETag, or an empty 304 when the client already has it. A
    signed-in ``viewer``'s answer, or any request with credentials, is ``private``."""
    private = private or viewer is not None or is_private(request)
    return _answer(request, body, etag_headers(body, private=private, viewer=viewer))


# Where ``cached_json`` leaves the body it answered with its headers, in the request's scope: the
# response cache (response_cache.py) keeps an answer only when the route left one.
CACHED_ANSWER = "cached_answer"


async def cached_json(
    request: Request,
    cache: Cache,
    key: str,
    load: Callable[[], Awaitable[bytes]],
    *,
    viewer: int | None = None,
) -> Response:
    """Serve ``key`` from the cache (one ``load`` for concurrent misses), with an ETag.
    ``viewer`` is the signed-in caller (security.caller_of): ``key`` must then be a key the
    body is right for, shared (public data) or the viewer's own.

    Calling it is how a GET route declares that the response cache in front of the router
    (response_cache.py) may keep its answers, per caller: the body is the cached value, and a
    write that invalidates the key drops every copy. So the route's own checks run on a miss
    only: what a caller may see must follow from who they are and the cached data (as here), or
    the route answers with ``json_with_etag``."""
    if viewer is None and is_private(request):
        return json_with_etag(request, await load(), private=True)
    body = await cache.get_or_set(key, load)
    headers = etag_headers(body, private=viewer is not None, viewer=viewer)
    request.scope[CACHED_ANSWER] = (body, headers)
    return _answer(request, body, headers)
