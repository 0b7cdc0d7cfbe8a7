"""Liveness (the process answers) and readiness (its dependencies answer)."""

import asyncio

from fastapi import APIRouter, Response, status
from pydantic import BaseModel
from sqlalchemy import text

from ..lifespan import ResourcesDep

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
    """503 when the database does not answer. A cache that does not answer is reported as
    degraded but keeps the service ready: requests are then served from the database."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), resources.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            cache_ok = await resources.cache.ping()
    except TimeoutError:
        cache_ok = False
    checks["cache"] = "ok" if cache_ok else "degraded"
    if checks["database"] != "ok":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", checks=checks)
    return Health(status="ok" if cache_ok else "degraded", checks=checks)
