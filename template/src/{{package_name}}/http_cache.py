"""HTTP side of caching: ETag / If-None-Match, and the rule that private requests bypass the
shared cache."""

import hashlib
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from .cache import Cache


def is_private(request: Request) -> bool:
    """A request with credentials may get a personalized answer: never share it through the
    cache. Add any other identity-bearing header your service uses here."""
    return "authorization" in request.headers or "cookie" in request.headers


def etag_of(body: bytes) -> str:
    # Weak: gzip changes the bytes on the wire, not the representation. SHA-256 (128 bits of
    # it): CPUs hash it in hardware, ~3x faster than BLAKE2b here (4 vs 12 us for a 7 kB page),
    # and every cached hit pays it.
    return f'W/"{hashlib.sha256(body).hexdigest()[:32]}"'


def _matches(if_none_match: str, etag: str) -> bool:
    opaque = etag.removeprefix("W/")
    return any(
        candidate == "*" or candidate.removeprefix("W/") == opaque
        for candidate in (part.strip() for part in if_none_match.split(","))
    )


def json_with_etag(request: Request, body: bytes, *, private: bool = False) -> Response:
    """The JSON ``body`` with an ETag, or an empty 304 when the client already has it. A request
    with credentials always gets ``private``: its answer may be personalized."""
    private = private or is_private(request)
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache" if private else "no-cache"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


async def cached_json(
    request: Request, cache: Cache, key: str, load: Callable[[], Awaitable[bytes]]
) -> Response:
    """Serve ``key`` from the shared cache (one ``load`` for concurrent misses), with an ETag."""
    if is_private(request):
        return json_with_etag(request, await load(), private=True)
    return json_with_etag(request, await cache.get_or_set(key, load))
