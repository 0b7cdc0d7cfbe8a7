"""Bench-only routes: the naive twins the benchmark compares the real endpoints with.

Only the apps in ``bench/apps.py`` mount this router; ``create_app`` never does, so these routes
cannot be reached in a deployed service.
"""

from bench_service.db.models import Project, User
from bench_service.deps import DbDep
from bench_service.http_cache import json_with_etag
from bench_service.pagination import OffsetDep, Page
from bench_service.schemas import OwnerPublic, ProjectPublic
from fastapi import APIRouter, Request, Response
from sqlalchemy import false, func, select

router = APIRouter(prefix="/bench", tags=["bench"], include_in_schema=False)


@router.get("/projects-naive")
async def list_projects_naive(request: Request, db: DbDep, params: OffsetDep) -> Response:
    """``GET /api/v1/projects`` (anonymous: public projects) loaded the N+1 way: one owner query
    per project on the page.

    The owner relationship is ``lazy="raise"``, so the N+1 is spelled out as explicit selects; the
    JSON and headers are what the eager endpoint returns.
    """
    session = db.session
    public = Project.private.is_(false())
    total = await session.scalar(select(func.count()).select_from(Project).where(public))
    projects = await session.scalars(
        select(Project)
        .where(public)
        .order_by(Project.id)
        .offset(params.offset)
        .limit(params.page_size)
    )
    items = []
    for project in projects:
        owner = (
            await session.execute(select(User.id, User.name).where(User.id == project.owner_id))
        ).one()
        items.append(
            ProjectPublic(
                id=project.id,
                name=project.name,
                description=project.description,
                private=project.private,
                item_count=project.item_count,
                created_at=project.created_at,
                owner=OwnerPublic(id=owner.id, name=owner.name),
            )
        )
    page = Page[ProjectPublic](
        total=total or 0, page=params.page, page_size=params.page_size, items=items
    )
    return json_with_etag(request, page.model_dump_json().encode())
