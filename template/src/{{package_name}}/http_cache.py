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


def _matches(if_none_match: str, etag: str) -> bool:
    opaque = etag.removeprefix("W/")
    return any(
        candidate == "*" or candidate.removeprefix("W/") == opaque
        for candidate in (part.strip() for part in if_none_match.split(","))
    )


def json_with_etag(
    request: Request, body: bytes, *, private: bool = False, viewer: int | None = None
) -> Response:
    """The JSON ``body`` with an ETag, or an empty 304 when the client already has it. A
    signed-in ``viewer``'s answer, or any request with credentials, is ``private``."""
    private = private or viewer is not None or is_private(request)
    etag = etag_of(body, viewer)
    headers = {
        "ETag": etag,
        "Cache-Control": "private, no-cache" if private else "no-cache",
        "Vary": VARY,
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


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
    body is right for, shared (public data) or the viewer's own."""
    if viewer is None and is_private(request):
        return json_with_etag(request, await load(), private=True)
    return json_with_etag(request, await cache.get_or_set(key, load), viewer=viewer)
