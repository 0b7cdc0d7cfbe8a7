"""FastAPI dependencies, all in one module: the resources the lifespan opens (lifespan.py) and
the thin ``*Dep`` aliases endpoints declare to get them, never through globals.

Dependencies are ``async def`` even when they never await: FastAPI runs a plain ``def``
dependency in its thread pool, a thread hop per dependency per request.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from taskiq import AsyncBroker

from .cache import Cache
from .db import queries
from .ratelimit import RateLimits
from .response_cache import ResponseCache
from .settings import Settings


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    # Readiness only (api/health.py): one connection per check, outside the pool.
    probe_engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    cache: Cache
    http: httpx.AsyncClient
    rate_limits: RateLimits
    # Answers served before routing (response_cache.py).
    responses: ResponseCache
    # The job queue (job_queue.py); its tasks are registered by main.py (jobs.py).
    broker: AsyncBroker


def resources_of(request: Request) -> Resources:
    """The resources without a dependency: for hot endpoints (a cache hit), where resolving one
    more dependency is a measurable part of the request."""
    resources: Resources = request.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    return resources_of(request)


async def get_db(request: Request) -> AsyncIterator[queries.Db]:
    async with queries.open_db(resources_of(request).engine) as db:
        yield db


async def get_cache(request: Request) -> Cache:
    return resources_of(request).cache


async def get_http_client(request: Request) -> httpx.AsyncClient:
    return resources_of(request).http


async def get_settings_dep(request: Request) -> Settings:
    return resources_of(request).settings


ResourcesDep = Annotated[Resources, Depends(get_resources)]
DbDep = Annotated[queries.Db, Depends(get_db)]
CacheDep = Annotated[Cache, Depends(get_cache)]
HttpClientDep = Annotated[httpx.AsyncClient, Depends(get_http_client)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
