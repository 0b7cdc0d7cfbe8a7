"""The app variants the bench servers run, each built from ``create_app``.

uvicorn starts them as factories (``--factory``) with settings from the environment. Only the
``bench`` command does that: the service's own entry points never import this module.
"""

import logging
import time

from bench_service.main import create_app
from bench_service.observability.timing import RequestTimings, TimingMiddleware, current_timings
from bench_service.schemas import OwnerPublic
from bench_service.settings import Settings, get_settings
from fastapi import FastAPI, Request, Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.types import ASGIApp

from .routes import router as bench_router

logger = logging.getLogger(__name__)

CEILING_PATH = "/bench/ceiling"
CEILING_PAGE_PATH = "/bench/ceiling-page"
FIFTY_PATH = "/bench/fifty"
FIFTY = [OwnerPublic(id=n, name=f"User {n}") for n in range(1, 51)]


def full_app(settings: Settings | None = None) -> FastAPI:
    """The service as deployed (every middleware), plus the bench-only routes."""
    app = create_app(settings)
    app.include_router(bench_router)
    return app


def memory_cache_app(settings: Settings | None = None) -> FastAPI:
    """The service as deployed, but with the memory backend where this render has Redis: figure 1
    measures both backends' hits side by side (no setting switches a render's backend)."""
    from bench_service import lifespan
    from bench_service.cache import Cache, MemoryBackend

    def create_memory_cache(settings: Settings) -> Cache:
        cache = settings.cache
        backend = MemoryBackend(max_entries=cache.max_entries, max_bytes=cache.max_bytes)
        return Cache(backend, prefix=cache.key_prefix, default_ttl=cache.ttl_seconds)

    lifespan.create_cache = create_memory_cache  # this server's process only
    return full_app(settings)


def _without_middleware(settings: Settings | None) -> FastAPI:
    app = full_app(settings)
    # The middleware stack is built on the first request, so clearing the list here removes it.
    app.user_middleware.clear()
    return app


def bare_app(settings: Settings | None = None) -> FastAPI:
    """No middleware at all, and the ceilings: PUT bytes once, GET serves them from memory (one
    object at ``CEILING_PATH``, a page at ``CEILING_PAGE_PATH``)."""
    app = _without_middleware(settings)
    app.state.ceiling_bodies = {CEILING_PATH: b"", CEILING_PAGE_PATH: b""}

    for path in (CEILING_PATH, CEILING_PAGE_PATH):

        @app.put(path, include_in_schema=False)
        async def set_ceiling(request: Request) -> Response:
            app.state.ceiling_bodies[request.url.path] = await request.body()
            return Response(status_code=204)

    @app.get(CEILING_PATH, include_in_schema=False)
    async def ceiling() -> Response:
        return Response(app.state.ceiling_bodies[CEILING_PATH], media_type="application/json")

    @app.get(CEILING_PAGE_PATH, include_in_schema=False)
    async def ceiling_page() -> Response:
        body = app.state.ceiling_bodies[CEILING_PAGE_PATH]
        return Response(body, media_type="application/json")

    @app.get(FIFTY_PATH, include_in_schema=False)
    async def fifty() -> list[OwnerPublic]:
        # The uncached reads' ceiling: a bare FastAPI route, 50 constant small objects.
        return FIFTY

    return app


def pure_timing_app(settings: Settings | None = None) -> FastAPI:
    """Only the service's pure-ASGI timing middleware."""
    app = _without_middleware(settings)
    slow_request_ms = (settings or get_settings()).app.slow_request_ms
    app.add_middleware(TimingMiddleware, slow_request_ms=slow_request_ms)
    return app


def base_http_timing_app(settings: Settings | None = None) -> FastAPI:
    """Only the same timing logic as a ``BaseHTTPMiddleware``, to measure what that costs."""
    app = _without_middleware(settings)
    slow_request_ms = (settings or get_settings()).app.slow_request_ms
    app.add_middleware(BaseHTTPTimingMiddleware, slow_request_ms=slow_request_ms)
    return app


class BaseHTTPTimingMiddleware(BaseHTTPMiddleware):
    """``TimingMiddleware`` as a ``BaseHTTPMiddleware``: the pattern the service avoids."""

    def __init__(self, app: ASGIApp, *, slow_request_ms: float) -> None:
        super().__init__(app)
        self.slow_request_seconds = slow_request_ms / 1000

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        timings = RequestTimings()
        token = current_timings.set(timings)
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            elapsed = time.perf_counter() - start
            response.headers["X-Process-Time"] = f"{elapsed:.6f}"
            response.headers["Server-Timing"] = (
                f"app;dur={elapsed * 1000:.1f}, "
                f'db;dur={timings.db_seconds * 1000:.1f};desc="queries={timings.db_statements}"'
            )
            return response
        finally:
            elapsed = time.perf_counter() - start
            if elapsed >= self.slow_request_seconds:
                logger.warning(
                    "slow request: %s %s -> %s in %.1f ms (db %.1f ms, %d queries)",
                    request.method,
                    request.url.path,
                    status,
                    elapsed * 1000,
                    timings.db_seconds * 1000,
                    timings.db_statements,
                )
            current_timings.reset(token)
