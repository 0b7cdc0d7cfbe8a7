"""Liveness (the process answers) and readiness (its dependencies answer)."""

import asyncio

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy.pool import QueuePool

from ..db import migrate
from ..deps import Resources, ResourcesDep
from ..settings import UPGRADE_ADVICE

router = APIRouter(prefix="/health", tags=["health"])

CHECK_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/live")
async def live() -> Health:
    return Health(status="ok")


@router.get("/ready", responses={503: {"model": Health}})
async def ready(resources: ResourcesDep, response: Response) -> Health:
    """503 when the database does not answer or its schema is behind the code's migrations.
    A database whose every pooled connection is in use is "busy" but ready: shedding that load
    is the API's job (503 with Retry-After), and a probe that failed then would pull every
    instance at once. A cache that does not answer is reported as degraded but keeps the
    service ready: requests are then served from the database."""
    checks = {"database": await _check_database(resources)}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            cache_ok = await resources.cache.ping()
    except TimeoutError:
        cache_ok = False
    checks["cache"] = "ok" if cache_ok else "degraded"
    if checks["database"] not in ("ok", "busy"):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", checks=checks)
    if checks["database"] == "busy":
        return Health(status="busy", checks=checks)
    return Health(status="ok" if cache_ok else "degraded", checks=checks)


async def _check_database(resources: Resources) -> str:
    # On a connection of its own (probe_engine), never one from the request pool.
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            async with resources.probe_engine.connect() as conn:
                behind = await migrate.schema_behind(conn)
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    if behind:
        return f"schema behind its migrations: {UPGRADE_ADVICE}"
    pool, database = resources.engine.pool, resources.settings.database
    capacity = database.pool_size + database.max_overflow
    if isinstance(pool, QueuePool) and pool.checkedout() >= capacity:
        return "busy"
    return "ok"
