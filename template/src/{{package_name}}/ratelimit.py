"""Rate limits on every API route, and the sign-in lockout, counted by the ``limits`` library in
the cache's store: Redis, shared by every process and replica, or this process's memory
(ratelimit_store.py).

- Every request under the API prefix is counted before routing (``RateLimitMiddleware``), so no
  route escapes: sign-in, refresh and sign-up count against the stricter ``credentials`` limit,
  every other route against ``default``. The key is the verified user id of a valid bearer
  token, else the client's address (``RATE_LIMIT_TRUSTED_PROXY_HOPS`` says how many
  X-Forwarded-For entries were added by proxies of ours). A token is verified once per request:
  the routes reuse the answer (security.verified_user_id).
- Fixed windows: one counter per key and window, an INCR and EXPIRE script in Redis. Moving
  windows would keep a timestamp per request in Redis, and cost more per check. Requests are
  counted here and sent to the store in batches of 1% of the limit (``RateLimits._batched``):
  in Redis a round trip per request cost more CPU than the rest of a cached answer; in memory
  the library's calls (count, then the window's state for the RateLimit-* headers) were 40% of
  a cached answer. A key found over its limit is remembered in this process until its window
  ends: a flood of refused requests costs no round trip at all.
- The lockout (``sign_in_attempt``) counts sign-in attempts per account in a moving window, before
  the password is hashed, and forgets them when a sign-in succeeds: after ``lockout_failures``
  failures within ``lockout_seconds``, every attempt is refused until the oldest one leaves the
  window, the right password too.
- The store unreachable: requests are let through (fail open), one warning per outage, and the
  store is tried again every ``RETRY_SECONDS``; the first answer ends the outage.
"""

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .middleware import append_headers
from .security import bearer_user_id
from .settings import RateLimitSettings, Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# While the store is unreachable, one request in this long tries it again.
RETRY_SECONDS = 1.0
# Keys remembered as over their limit, or with requests not yet sent to the store, at most
# (the oldest are forgotten first).
MAX_REFUSED_KEYS = 100_000
# Requests of one caller sent to Redis together, at most (_batched).
MAX_BATCH = 50
# An address taken from X-Forwarded-For is cut to this length (an IPv6 address is at most 45).
MAX_ADDRESS_CHARS = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the limit and the seconds until it lets requests through."""

    limit: RateLimitItem
    retry_after: int


@dataclass(frozen=True, slots=True)
class Counted:
    """A request let through, with what is left of its window and the seconds until it ends."""

    remaining: int
    reset_after: int


def _keep(kept: dict[str, T], key: str, value: T) -> None:
    """``kept[key] = value``, forgetting the oldest key first when MAX_REFUSED_KEYS are kept."""
    if key not in kept and len(kept) >= MAX_REFUSED_KEYS:
        kept.pop(next(iter(kept)))
    kept[key] = value


def _seconds_until(reset_time: float) -> int:
    return max(1, math.ceil(reset_time - time.time()))


class RateLimits:
    """The service's counters: route limits per caller, and sign-in attempts per account."""

    def __init__(
        self,
        settings: RateLimitSettings,
        storage: Storage,
        lockout: Storage,
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.enabled = settings.enabled
        self.trusted_proxy_hops = settings.trusted_proxy_hops
        self.default = parse(settings.default)
        self.credentials = parse(settings.credentials)
        self.lockout = RateLimitItemPerSecond(
            settings.lockout_failures, settings.lockout_seconds, namespace="SIGNIN"
        )
        self.shared = not isinstance(storage, MemoryStorage)
        self._close = close
        self._windows = FixedWindowRateLimiter(storage)
        self._attempts = MovingWindowRateLimiter(lockout)
        # Keys over their limit, with the time (time.time()) their window ends.
        self._refused: dict[str, float] = {}
        # Requests counted here, not yet in the store, and until when (monotonic) they count.
        self._pending: dict[str, tuple[int, float]] = {}
        # Memory store: what was left of a key's window after its last batch, and when
        # (time.time()) the window ends: the headers of the requests counted here since.
        self._left: dict[str, tuple[int, float]] = {}
        self._up = True
        self._retry_at = 0.0

    # --- the store, failing open

    async def _ask(self, call: Callable[[], Awaitable[T]], fallback: T) -> T:
        if not self._up and time.monotonic() < self._retry_at:
            return fallback
        try:
            answer = await call()
        except (StorageError, OSError) as exc:
            if self._up:
                logger.warning(
                    "rate limits are off: their store is unreachable (%s); requests are let"
                    " through, retrying every %.0f s",
                    type(getattr(exc, "storage_error", exc)).__name__,
                    RETRY_SECONDS,
                )
            self._up = False
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return fallback
        if not self._up:
            self._up = True
            logger.warning("rate limits are back: their store answers again")
        return answer

    # --- route limits

    def limit_for(self, method: str, path: str, credential_paths: frozenset[str]) -> RateLimitItem:
        return self.credentials if method == "POST" and path in credential_paths else self.default

    async def hit(self, limit: RateLimitItem, caller: str) -> Refusal | Counted | None:
        """Count one request of ``caller`` against ``limit``: a Refusal when it is over; else
        what is left of the window when that costs no round trip (the memory store), or None."""
        key = limit.key_for(caller)
        ends = self._refused.get(key)
        if ends is not None:
            if ends > time.time():
                return Refusal(limit, _seconds_until(ends))
            del self._refused[key]
        cost = self._batched(limit, key)
        if cost:
            self._left.pop(key, None)
            if not await self._ask(lambda: self._windows.hit(limit, caller, cost=cost), True):
                return await self._refuse(limit, caller, key)
        return None if self.shared else await self._counted(limit, caller, key)

    async def _refuse(self, limit: RateLimitItem, caller: str, key: str) -> Refusal:
        stats = await self._ask(lambda: self._windows.get_window_stats(limit, caller), None)
        ends = time.time() + limit.get_expiry() if stats is None else stats.reset_time
        _keep(self._refused, key, ends)
        return Refusal(limit, _seconds_until(ends))

    def _batched(self, limit: RateLimitItem, key: str) -> int:
        """How many requests to count in the store now; 0: the request is counted here only.
        The first request of a window goes at once (it opens the window in the store), then
        batches of 1% of the limit (at most MAX_BATCH; a limit under 200 counts every request
        in the store). In memory a batch also goes as soon as it would use up what was left of
        the window, so the count stays exact. In Redis other processes count too: this process
        may let through up to a batch more than the limit, or leave a batch uncounted at a
        window's end."""
        batch = min(MAX_BATCH, limit.amount // 100)
        if batch <= 1:
            return 1
        now = time.monotonic()
        count, until = self._pending.pop(key, (0, 0.0))
        if until <= now:
            count, until, send = 0, now + limit.get_expiry(), 1
        else:
            count += 1
            left = self._left.get(key)
            send = count if count >= batch or (left is not None and count >= left[0]) else 0
            if send:
                count = 0
        _keep(self._pending, key, (count, until))
        return send

    async def _counted(self, limit: RateLimitItem, caller: str, key: str) -> Counted | None:
        """What is left of the window: the store's answer at the last batch (asked once per
        batch), less the requests counted here since. None when the store does not answer."""
        left = self._left.get(key)
        if left is None or left[1] <= time.time():
            stats = await self._ask(lambda: self._windows.get_window_stats(limit, caller), None)
            if stats is None:
                return None
            left = (stats.remaining, stats.reset_time)
            _keep(self._left, key, left)
        counted_here = self._pending.get(key, (0, 0.0))[0]
        return Counted(max(0, left[0] - counted_here), _seconds_until(left[1]))

    # --- sign-in lockout

    async def sign_in_attempt(self, account: str) -> Refusal | None:
        """Count a sign-in attempt for ``account`` before its password is checked: a Refusal
        once the account has had ``lockout_failures`` attempts within ``lockout_seconds``."""
        if not self.enabled:
            return None
        if await self._ask(lambda: self._attempts.hit(self.lockout, account), True):
            return None
        stats = await self._ask(
            lambda: self._attempts.get_window_stats(self.lockout, account), None
        )
        ends = time.time() + self.lockout.get_expiry() if stats is None else stats.reset_time
        return Refusal(self.lockout, _seconds_until(ends))

    async def signed_in(self, account: str) -> None:
        """A successful sign-in: its failed attempts are forgotten."""
        if self.enabled:
            await self._ask(lambda: self._attempts.clear(self.lockout, account), None)

    async def close(self) -> None:
        await self._close()


# --- who is asking


def _header(scope: Scope, name: bytes) -> str | None:
    values = [value for key, value in scope["headers"] if key == name]
    if not values:
        return None
    return b",".join(values).decode("latin-1")


def client_address(scope: Scope, trusted_proxy_hops: int) -> str:
    """The client's address: the peer's, or behind ``trusted_proxy_hops`` proxies of ours the
    entry that many from the right of X-Forwarded-For (each proxy appends the address it was
    called from; entries further left are whatever the client sent)."""
    peer = scope.get("client")
    address = peer[0] if peer else "unknown"
    if trusted_proxy_hops:
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded:
            entries = [entry.strip() for entry in forwarded.split(",") if entry.strip()]
            if entries:
                address = entries[-min(trusted_proxy_hops, len(entries))][:MAX_ADDRESS_CHARS]
    return address


def caller_key(scope: Scope, settings: Settings, trusted_proxy_hops: int) -> str:
    """``user:<id>`` for a valid bearer token (verified once per request), else ``ip:<addr>``."""
    authorization = _header(scope, b"authorization")
    if authorization is not None:
        user_id = bearer_user_id(scope, settings, authorization)
        if user_id is not None:
            return f"user:{user_id}"
    return f"ip:{client_address(scope, trusted_proxy_hops)}"


def too_many_requests(refusal: Refusal, detail: str) -> JSONResponse:
    limit = refusal.limit
    return JSONResponse(
        {"detail": f"{detail}: retry after {refusal.retry_after} s"},
        status_code=429,
        headers={
            "Retry-After": str(refusal.retry_after),
            "RateLimit-Limit": str(limit.amount),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(refusal.retry_after),
        },
    )


class RateLimitMiddleware:
    """Counts every request whose path starts with ``prefix`` (the API router's): 429 with
    Retry-After and RateLimit-* over the limit; within it the request goes on, with RateLimit-*
    headers on its answer when they cost no round trip (the memory store)."""

    def __init__(self, app: ASGIApp, *, prefix: str, credential_paths: frozenset[str]) -> None:
        self.app = app
        self.prefix = prefix
        self.credential_paths = credential_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        resources = scope["state"]["resources"]
        limits: RateLimits = resources.rate_limits
        if not limits.enabled:
            await self.app(scope, receive, send)
            return
        limit = limits.limit_for(scope["method"], scope["path"], self.credential_paths)
        caller = caller_key(scope, resources.settings, limits.trusted_proxy_hops)
        counted = await limits.hit(limit, caller)
        if isinstance(counted, Refusal):
            detail = f"rate limit of {limit} exceeded"
            await too_many_requests(counted, detail)(scope, receive, send)
            return
        if counted is None:
            await self.app(scope, receive, send)
            return
        headers = (
            (b"ratelimit-limit", b"%d" % limit.amount),
            (b"ratelimit-remaining", b"%d" % counted.remaining),
            (b"ratelimit-reset", b"%d" % counted.reset_after),
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                append_headers(message, *headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)
