"""Projects: eager-loaded owners, offset and keyset pages, cached reads, invalidating writes,
and a background recount."""

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, HTTPException, Path, Request, Response, status
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from ..cache import Cache
from ..db.models import Item, Project, User
from ..http_cache import cached_json, json_with_etag
from ..lifespan import CacheDep, Resources, ResourcesDep, SessionDep, SettingsDep
from ..pagination import CursorPage, KeysetDep, OffsetDep, OffsetParams, Page, next_cursor
from ..schemas import ProjectCreate, ProjectPublic, ProjectUpdate, TaskAccepted

router = APIRouter(prefix="/projects", tags=["projects"])

LIST_NAMESPACE = "projects-list"
ProjectId = Annotated[int, Path(ge=1)]

# One query for projects and their owners (only the owner columns we return): no N+1.
_with_owner = joinedload(Project.owner, innerjoin=True).load_only(User.id, User.name)


def project_key(cache: Cache, project_id: int) -> str:
    return cache.key("projects", project_id)


async def invalidate_project(cache: Cache, project_id: int) -> None:
    await cache.delete(project_key(cache, project_id))
    await cache.invalidate_namespace(LIST_NAMESPACE)


async def _load_page(session: AsyncSession, params: OffsetParams) -> bytes:
    total = await session.scalar(select(func.count()).select_from(Project))
    projects = await session.scalars(
        select(Project)
        .options(_with_owner)
        .order_by(Project.id)
        .offset(params.offset)
        .limit(params.page_size)
    )
    page = Page[ProjectPublic](
        total=total or 0,
        page=params.page,
        page_size=params.page_size,
        items=[ProjectPublic.model_validate(project) for project in projects],
    )
    return page.model_dump_json().encode()


@router.get("", response_model=Page[ProjectPublic])
async def list_projects(
    request: Request, session: SessionDep, cache: CacheDep, settings: SettingsDep, params: OffsetDep
) -> Response:
    async def load() -> bytes:
        return await _load_page(session, params)

    if params.page > settings.cache.cached_list_pages:
        return json_with_etag(request, await load())
    key = await cache.namespace_key(LIST_NAMESPACE, params.page, params.page_size)
    return await cached_json(request, cache, key, load)


@router.get("/cursor")
async def list_projects_by_cursor(
    session: SessionDep, settings: SettingsDep, params: KeysetDep
) -> CursorPage[ProjectPublic]:
    query = select(Project).options(_with_owner).order_by(Project.id).limit(params.limit + 1)
    if params.after_id is not None:
        query = query.where(Project.id > params.after_id)
    projects = list(await session.scalars(query))
    has_more = len(projects) > params.limit
    projects = projects[: params.limit]
    return CursorPage[ProjectPublic](
        items=[ProjectPublic.model_validate(project) for project in projects],
        next_cursor=next_cursor(settings, projects[-1].id) if has_more else None,
    )


async def _get_project(session: AsyncSession, project_id: int) -> Project:
    project = await session.scalar(
        select(Project).options(_with_owner).where(Project.id == project_id)
    )
    if project is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")
    return project


@router.get("/{project_id}", response_model=ProjectPublic)
async def get_project(
    project_id: ProjectId, request: Request, session: SessionDep, cache: CacheDep
) -> Response:
    async def load() -> bytes:
        project = await _get_project(session, project_id)
        return ProjectPublic.model_validate(project).model_dump_json().encode()

    return await cached_json(request, cache, project_key(cache, project_id), load)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_project(
    body: ProjectCreate, session: SessionDep, cache: CacheDep
) -> ProjectPublic:
    owner = await session.get(User, body.owner_id)
    if owner is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"owner_id: user {body.owner_id} not found"
        )
    project = Project(**body.model_dump(), owner=owner, item_count=0)
    session.add(project)
    await session.commit()
    await cache.invalidate_namespace(LIST_NAMESPACE)
    return ProjectPublic.model_validate(project)


@router.patch("/{project_id}")
async def update_project(
    project_id: ProjectId, body: ProjectUpdate, session: SessionDep, cache: CacheDep
) -> ProjectPublic:
    project = await _get_project(session, project_id)
    for field, value in body.model_dump(exclude_unset=True).items():
        setattr(project, field, value)
    await session.commit()
    await invalidate_project(cache, project_id)
    return ProjectPublic.model_validate(project)


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: ProjectId, session: SessionDep, cache: CacheDep) -> None:
    result = await session.execute(delete(Project).where(Project.id == project_id))
    await session.commit()
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")
    await invalidate_project(cache, project_id)


async def recount_items(resources: Resources, project_id: int) -> None:
    """Runs after the response: recompute the denormalized item_count of a project."""
    async with resources.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(Item).where(Item.project_id == project_id)
        )
        project = await session.get(Project, project_id)
        if project is None:
            return
        project.item_count = count or 0
        await session.commit()
    await invalidate_project(resources.cache, project_id)


@router.post("/{project_id}/recount", status_code=status.HTTP_202_ACCEPTED)
async def schedule_recount(
    project_id: ProjectId,
    session: SessionDep,
    resources: ResourcesDep,
    background_tasks: BackgroundTasks,
) -> TaskAccepted:
    if await session.get(Project, project_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")
    background_tasks.add_task(recount_items, resources, project_id)
    return TaskAccepted(detail=f"item count of project {project_id} is being recomputed")
