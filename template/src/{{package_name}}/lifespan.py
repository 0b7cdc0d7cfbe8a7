"""The lifespan owns every pooled resource: opened once at startup, closed at shutdown.

Endpoints get them through the thin ``*Dep`` aliases below, never through globals.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from taskiq import AsyncBroker

from .cache import Cache, create_cache
from .db.engine import (
    DatabaseUnavailable,
    create_engine,
    create_probe_engine,
    create_sessionmaker,
)
from .job_queue import create_broker, start_broker, stop_broker
from .observability import observe_resources
from .request_log import InFlight
from .settings import Settings

logger = logging.getLogger(__name__)

# At shutdown, how long requests the server has cancelled get to give back what they hold.
UNWIND_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    # Readiness only (api/health.py): one connection per check, outside the pool.
    probe_engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    cache: Cache
    http: httpx.AsyncClient
    # The job queue (job_queue.py); its tasks are registered by main.py (jobs.py).
    broker: AsyncBroker


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    http = settings.http
    return httpx.AsyncClient(
        base_url=http.upstream_url,
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
            logger.warning("closing the pools with %d requests still in flight", in_flight.count)
        await stop_broker(broker, UNWIND_SECONDS)
        stop_observing()
        await http.aclose()
        await cache.close()
        await engine.dispose()
        await probe_engine.dispose()


# Dependencies are `async def` even when they never await: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hop per dependency per request.


def resources_of(request: Request) -> Resources:
    """The resources without a dependency: for hot endpoints (a cache hit), where resolving one
    more dependency is a measurable part of the request."""
    resources: Resources = request.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    return resources_of(request)


@asynccontextmanager
async def open_session(resources: Resources) -> AsyncIterator[AsyncSession]:
    session = resources.sessionmaker()
    try:
        yield session
    finally:
        await _close(session)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with open_session(resources_of(request)) as session:
        yield session


async def _close(session: AsyncSession) -> None:
    # This runs once the answer is made, often after it was sent: a connection that breaks now
    # (the database restarting) must cost the pool that connection, not the client a failure.
    try:
        await session.close()
    except Exception as exc:
        if not isinstance(exc, DatabaseUnavailable):  # that one is logged once per outage
            logger.warning("closing a database session failed (%s: %s)", type(exc).__name__, exc)
        await session.invalidate()


ResourcesDep = Annotated[Resources, Depends(get_resources)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_cache(request: Request) -> Cache:
    return resources_of(request).cache


async def get_http_client(request: Request) -> httpx.AsyncClient:
    return resources_of(request).http


async def get_settings_dep(request: Request) -> Settings:
    return resources_of(request).settings


CacheDep = Annotated[Cache, Depends(get_cache)]
HttpClientDep = Annotated[httpx.AsyncClient, Depends(get_http_client)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
