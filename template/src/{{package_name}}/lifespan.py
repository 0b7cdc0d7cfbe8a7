"""The lifespan owns every pooled resource: opened once at startup, closed at shutdown.

Endpoints get them through the thin ``*Dep`` aliases of deps.py, never through globals.
"""

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from .cache import create_cache
from .db.engine import (
    create_engine,
    create_probe_engine,
    create_sessionmaker,
)
from .deps import Resources
from .job_broker import create_broker, start_broker
from .job_queue import stop_broker
from .observability.request_log import InFlight
from .observability.resources import observe_resources
from .ratelimit_store import create_rate_limits
from .response_cache import ResponseCache
from .settings import Settings

logger = logging.getLogger(__name__)

# At shutdown, how long requests the server has cancelled get to give back what they hold.
UNWIND_SECONDS = 5.0


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The CA bundle, loaded once per process: a load is ~40 ms of CPU, and every client (one
    per lifespan: a test suite starts hundreds) can share one context."""
    return httpx.create_ssl_context()


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    http = settings.http
    return httpx.AsyncClient(
        base_url=http.upstream_url,
        verify=tls_context(),
        timeout=httpx.Timeout(http.read_timeout_seconds, connect=http.connect_timeout_seconds),
        limits=httpx.Limits(
            max_connections=http.max_connections,
            max_keepalive_connections=http.max_keepalive_connections,
        ),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Resources]]:
    settings: Settings = app.state.settings
    engine = create_engine(settings.database)
    probe_engine = create_probe_engine(settings.database)
    cache = create_cache(settings)
    http = create_http_client(settings)
    rate_limits = create_rate_limits(settings)
    stop_observing = observe_resources(settings, engine, http)
    broker = create_broker(settings)
    app.state.register_jobs(broker)
    resources = Resources(
        settings=settings,
        engine=engine,
        probe_engine=probe_engine,
        sessionmaker=create_sessionmaker(engine),
        cache=cache,
        http=http,
        rate_limits=rate_limits,
        responses=ResponseCache(settings),
        broker=broker,
    )
    broker.state.resources = resources  # what the jobs run with (jobs.py)
    try:
        await start_broker(broker)
        yield {"resources": resources}
    finally:
        # Requests cut by the server's shutdown finish unwinding first (request_log.InFlight).
        in_flight: InFlight = app.state.in_flight
        try:
            async with asyncio.timeout(UNWIND_SECONDS):
                await in_flight.idle()
        except TimeoutError:
            stuck = in_flight.stuck()
            logger.warning(
                "closing the pools with %d requests still in flight: %s",
                len(stuck),
                "; ".join(stuck),
            )
        await stop_broker(broker, UNWIND_SECONDS)
        stop_observing()
        await http.aclose()
        await cache.close()
        await rate_limits.close()
        await engine.dispose()
        await probe_engine.dispose()
