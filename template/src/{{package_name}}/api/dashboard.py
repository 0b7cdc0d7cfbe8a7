"""Dashboard: independent queries run concurrently, each on its own session (one AsyncSession
cannot run two statements at once)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, HTTPException, Path, status
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Item, Project, User
from ..lifespan import ResourcesDep
from ..schemas import Dashboard, DashboardStats, ProjectSummary, UserPublic

router = APIRouter(prefix="/dashboard", tags=["dashboard"])

T = TypeVar("T")
RECENT_PROJECTS = 10


async def _user(session: AsyncSession, user_id: int) -> UserPublic | None:
    row = (
        await session.execute(select(User.id, User.name, User.email).where(User.id == user_id))
    ).first()
    return None if row is None else UserPublic.model_validate(row)


async def _recent_projects(session: AsyncSession, user_id: int) -> list[ProjectSummary]:
    rows = await session.execute(
        select(Project.id, Project.name, Project.item_count)
        .where(Project.owner_id == user_id)
        .order_by(Project.id.desc())
        .limit(RECENT_PROJECTS)
    )
    return [ProjectSummary.model_validate(row) for row in rows]


async def _stats(session: AsyncSession, user_id: int) -> DashboardStats:
    row = (
        await session.execute(
            select(func.count(func.distinct(Project.id)), func.count(Item.id))
            .select_from(Project)
            .outerjoin(Item, Item.project_id == Project.id)
            .where(Project.owner_id == user_id)
        )
    ).one()
    return DashboardStats(project_count=row[0], item_count=row[1])


@router.get("/{user_id}")
async def get_dashboard(user_id: Annotated[int, Path(ge=1)], resources: ResourcesDep) -> Dashboard:
    async def on_own_session(query: Callable[[AsyncSession, int], Awaitable[T]]) -> T:
        async with resources.sessionmaker() as session:
            return await query(session, user_id)

    async with asyncio.TaskGroup() as group:
        user = group.create_task(on_own_session(_user))
        recent = group.create_task(on_own_session(_recent_projects))
        stats = group.create_task(on_own_session(_stats))
    found = user.result()
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return Dashboard(user=found, recent_projects=recent.result(), stats=stats.result())
