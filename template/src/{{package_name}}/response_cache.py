"""The response cache in front of the router: a repeated GET of a cached route is answered from
this process's memory, without routing, dependency resolution or serialization.

A route takes part by answering through ``http_cache.cached_json`` (the lists' ``cached_page``
does): that is its declaration, at the route. On a miss the request goes through FastAPI as
always, and the cache records every key its answer was read from with the value it had
(``cache.recorded_reads``). After a 200 or 304 the answer is kept here with those reads, as
ready-made variants: identity, gzip (compressed once, now, by the same GZip middleware as every
other answer) and the 304.

Never staler than the cache: a kept answer is served only while this process still holds every
one of its reads with the same value, without a round trip (``Cache.holds``: the memory backend,
or Redis's local tier, which Redis's invalidation pushes keep fresh across instances). A write
anywhere drops a key, and with it every answer read from it; the request then goes through as a
miss and fills again.

On a hit everything outside this middleware still runs (the request id, the access log line and
metrics, Server-Timing, the rate limit). Who asks is part of the key: the user id of a verified
bearer token (never the token), or nobody. A request with a cookie, or with an Authorization
header that is not a valid bearer token, is never answered here: the route decides.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cache import Cache, Read, recorded_reads
from .http_cache import CACHED_ANSWER, json_answer, not_modified
from .lru_store import LruStore
from .observability.metrics import record_cache_lookup
from .observability.request_log import ROUTE_TEMPLATE, route_template
from .security import bearer_user_id
from .settings import Settings

# A variant's headers and what they cost beside its body, for the store's byte bound.
HEADER_BYTES = 512


@dataclass(frozen=True, slots=True)
class Variant:
    start: Message
    body: bytes

    async def send(self, send: Send) -> None:
        # A fresh header list: the middlewares outside append theirs to it.
        await send({**self.start, "headers": list(self.start["headers"])})
        await send({"type": "http.response.body", "body": self.body})


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    reads: tuple[Read, ...]
    etag: str
    route: str
    identity: Variant
    gzip: Variant
    not_modified: Variant

    def __len__(self) -> int:
        return len(self.identity.body) + len(self.gzip.body) + 3 * HEADER_BYTES


class ResponseCache:
    """The kept answers of one process, bounded like the cache's own memory."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.cache.before_routing
        self.answers = LruStore[KeptAnswer](
            max_entries=settings.cache.max_entries, max_bytes=settings.cache.max_bytes
        )
        self.ttl_seconds = settings.cache.ttl_seconds


def _caller(scope: Scope, settings: Settings, authorization: bytes | None) -> str | None:
    """Who asks, as the key names them: the verified user id, or "-" for nobody; None when the
    route must decide (credentials that are not a valid bearer token)."""
    if authorization is None:
        return "-"
    user_id = bearer_user_id(scope, settings, authorization.decode("latin-1"))
    return None if user_id is None else str(user_id)


async def _render(app: ASGIApp, accept_encoding: bytes | None) -> Variant:
    """What ``app`` (an answer wrapped in the compression middleware) sends to a request with
    this Accept-Encoding."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def collect(message: Message) -> None:
        messages.append(message)

    headers = [] if accept_encoding is None else [(b"accept-encoding", accept_encoding)]
    await app({"type": "http", "method": "GET", "headers": headers}, receive, collect)
    start, *bodies = messages
    return Variant(start, b"".join(message.get("body", b"") for message in bodies))


class ResponseCacheMiddleware:
    """Answers a GET from ``ResponseCache`` when it can; otherwise lets it through, recording
    what the answer reads, and keeps the answer when the route offered it. ``compress`` wraps an
    ASGI app in the same compression as the app's own (main.py)."""

    def __init__(self, app: ASGIApp, *, compress: Callable[[ASGIApp], ASGIApp]) -> None:
        self.app = app
        self.compress = compress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        resources = scope["state"]["resources"]
        responses: ResponseCache = resources.responses
        if not responses.enabled:
            await self.app(scope, receive, send)
            return
        authorization = if_none_match = accept_encoding = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"cookie":
                await self.app(scope, receive, send)
                return
            elif name == b"if-none-match":
                if_none_match = value
            elif name == b"accept-encoding" and accept_encoding is None:
                accept_encoding = value
        caller = _caller(scope, resources.settings, authorization)
        if caller is None:
            await self.app(scope, receive, send)
            return
        key = f"{caller}:{scope['path']}?{scope['query_string'].decode('latin-1')}"
        cache: Cache = resources.cache
        kept = responses.answers.get(key)
        if kept is not None and cache.holds(kept.reads):
            record_cache_lookup(hit=True)
            scope[ROUTE_TEMPLATE] = kept.route
            if if_none_match and not_modified(if_none_match.decode("latin-1"), kept.etag):
                await kept.not_modified.send(send)
            elif accept_encoding is not None and b"gzip" in accept_encoding:
                await kept.gzip.send(send)
            else:
                await kept.identity.send(send)
            return
        await self._fill(scope, receive, send, responses, cache, key)

    async def _fill(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        responses: ResponseCache,
        cache: Cache,
        key: str,
    ) -> None:
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        reads: list[Read] = []
        token = recorded_reads.set(reads)
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            recorded_reads.reset(token)
        answer = scope.get(CACHED_ANSWER)
        if answer is None or status not in (200, 304) or not reads or not cache.holds(reads):
            return
        body, headers = answer

        def render(
            accept_encoding: bytes | None, *, not_modified: bool = False
        ) -> Awaitable[Variant]:
            # A new answer each time: the compression middleware edits its headers in place.
            answer = self.compress(json_answer(body, headers, not_modified=not_modified))
            return _render(answer, accept_encoding)

        kept = KeptAnswer(
            reads=tuple(dict.fromkeys(reads)),
            etag=headers["ETag"],
            route=route_template(scope),
            identity=await render(None),
            gzip=await render(b"gzip"),
            not_modified=await render(None, not_modified=True),
        )
        responses.answers.set(key, kept, responses.ttl_seconds)
