"""Dashboard: independent queries run concurrently, each on its own ``Db`` (one AsyncSession
cannot run two statements at once)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status

from ..db import queries
from ..db.queries import Db
from ..errors import documented
from ..lifespan import ResourcesDep
from ..schemas import Dashboard, ProjectSummary, RowId

router = APIRouter(prefix="/dashboard", tags=["dashboard"], responses=documented(503))

T = TypeVar("T")
RECENT_PROJECTS = 10


async def _recent_projects(db: Db, user_id: int) -> list[ProjectSummary]:
    return await queries.recent_projects(db, user_id, limit=RECENT_PROJECTS)


@router.get("/{user_id:int}", responses=documented(404))
async def get_dashboard(user_id: RowId, resources: ResourcesDep) -> Dashboard:
    async def on_own_db(query: Callable[[Db, int], Awaitable[T]]) -> T:
        async with queries.open_db(resources) as db:
            return await query(db, user_id)

    try:
        async with asyncio.TaskGroup() as group:
            user = group.create_task(on_own_db(queries.get_user))
            recent = group.create_task(on_own_db(_recent_projects))
            stats = group.create_task(on_own_db(queries.user_stats))
    except ExceptionGroup as failed:
        # The group has cancelled the other queries; the first failure is the answer (a pool
        # timeout or an unreachable database is then the same 503 as on every other route).
        raise failed.exceptions[0] from None
    found = user.result()
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return Dashboard(user=found, recent_projects=recent.result(), stats=stats.result())
