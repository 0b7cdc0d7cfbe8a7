"""Dashboard: independent queries run concurrently, each on its own ``Db`` (one AsyncSession
cannot run two statements at once)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, HTTPException, status

from ..db import queries
from ..db.queries import Db
from ..deps import ResourcesDep
from ..errors import documented
from ..schemas import Dashboard, RowId
from ..security import OptionalCallerId

router = APIRouter(prefix="/dashboard", tags=["dashboard"], responses=documented(503))

T = TypeVar("T")
RECENT_PROJECTS = 10


@router.get("/{user_id:int}", responses=documented(401, 404))
async def get_dashboard(
    user_id: RowId, resources: ResourcesDep, viewer: OptionalCallerId
) -> Dashboard:
    """A user's recent projects and totals; their private projects only for themselves."""

    async def on_own_db(query: Callable[[Db], Awaitable[T]]) -> T:
        async with queries.open_db(resources.engine) as db:
            return await query(db)

    try:
        async with asyncio.TaskGroup() as group:
            user = group.create_task(on_own_db(lambda db: queries.get_user(db, user_id)))
            recent = group.create_task(
                on_own_db(
                    lambda db: queries.recent_projects(
                        db, user_id, limit=RECENT_PROJECTS, viewer=viewer
                    )
                )
            )
            stats = group.create_task(
                on_own_db(lambda db: queries.user_stats(db, user_id, viewer=viewer))
            )
    except ExceptionGroup as failed:
        # The group has cancelled the other queries; the first failure is the answer (a pool
        # timeout or an unreachable database is then the same 503 as on every other route).
        raise failed.exceptions[0] from None
    found = user.result()
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return Dashboard(user=found, recent_projects=recent.result(), stats=stats.result())
