"""Projects: eager-loaded owners, offset and keyset pages, cached reads, invalidating writes,
and a background recount."""

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status

from ..cache import Cache
from ..db import queries
from ..db.queries import Db, DbDep
from ..errors import documented, invalid
from ..http_cache import cached_json, json_with_etag
from ..lifespan import CacheDep, Resources, ResourcesDep, SettingsDep
from ..pagination import CursorPage, KeysetDep, OffsetDep, OffsetParams, Page, next_cursor
from ..schemas import ProjectCreate, ProjectPublic, ProjectUpdate, RowId, TaskAccepted

router = APIRouter(prefix="/projects", tags=["projects"], responses=documented(503))

LIST_NAMESPACE = "projects-list"
ProjectId = RowId


def project_key(cache: Cache, project_id: int) -> str:
    return cache.key("projects", project_id)


async def invalidate_project(cache: Cache, project_id: int) -> None:
    await cache.delete(project_key(cache, project_id))
    await cache.invalidate_namespace(LIST_NAMESPACE)


async def _load_page(db: Db, params: OffsetParams) -> bytes:
    page = Page[ProjectPublic](
        total=await queries.count_projects(db),
        page=params.page,
        page_size=params.page_size,
        items=await queries.project_page(db, offset=params.offset, limit=params.page_size),
    )
    return page.model_dump_json().encode()


@router.get("", response_model=Page[ProjectPublic], responses=documented(304))
async def list_projects(request: Request, resources: ResourcesDep, params: OffsetDep) -> Response:
    async def load() -> bytes:
        # A session only on a miss: a cache hit never touches the database layer.
        async with queries.open_db(resources) as db:
            return await _load_page(db, params)

    if params.page > resources.settings.cache.cached_list_pages:
        return json_with_etag(request, await load())
    cache = resources.cache
    key = await cache.namespace_key(LIST_NAMESPACE, params.page, params.page_size)
    return await cached_json(request, cache, key, load)


@router.get("/cursor")
async def list_projects_by_cursor(
    db: DbDep, settings: SettingsDep, params: KeysetDep
) -> CursorPage[ProjectPublic]:
    projects = await queries.projects_after(db, params.after_id, limit=params.limit + 1)
    has_more = len(projects) > params.limit
    projects = projects[: params.limit]
    return CursorPage[ProjectPublic](
        items=projects,
        next_cursor=next_cursor(settings, projects[-1].id) if has_more else None,
    )


def _not_found(project_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")


@router.get("/{project_id}", response_model=ProjectPublic, responses=documented(304, 404))
async def get_project(project_id: ProjectId, request: Request, resources: ResourcesDep) -> Response:
    cache = resources.cache

    async def load() -> bytes:
        async with queries.open_db(resources) as db:
            project = await queries.get_project(db, project_id)
        if project is None:
            raise _not_found(project_id)
        return project.model_dump_json().encode()

    return await cached_json(request, cache, project_key(cache, project_id), load)


@router.post("", status_code=status.HTTP_201_CREATED, responses=documented(400))
async def create_project(body: ProjectCreate, db: DbDep, cache: CacheDep) -> ProjectPublic:
    project = await queries.create_project(db, body)
    if project is None:
        raise invalid(("body", "owner_id"), f"user {body.owner_id} not found")
    await cache.invalidate_namespace(LIST_NAMESPACE)
    return project


@router.patch("/{project_id}", responses=documented(400, 404))
async def update_project(
    project_id: ProjectId, body: ProjectUpdate, db: DbDep, cache: CacheDep
) -> ProjectPublic:
    project = await queries.update_project(db, project_id, body.model_dump(exclude_unset=True))
    if project is None:
        raise _not_found(project_id)
    await invalidate_project(cache, project_id)
    return project


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT, responses=documented(404))
async def delete_project(project_id: ProjectId, db: DbDep, cache: CacheDep) -> None:
    if not await queries.delete_project(db, project_id):
        raise _not_found(project_id)
    await invalidate_project(cache, project_id)


async def recount_items(resources: Resources, project_id: int) -> None:
    """Runs after the response: recompute the denormalized item_count of a project."""
    async with queries.open_db(resources) as db:
        await queries.recount_items(db, project_id)
    await invalidate_project(resources.cache, project_id)


@router.post(
    "/{project_id}/recount", status_code=status.HTTP_202_ACCEPTED, responses=documented(404)
)
async def schedule_recount(
    project_id: ProjectId,
    db: DbDep,
    resources: ResourcesDep,
    background_tasks: BackgroundTasks,
) -> TaskAccepted:
    if not await queries.project_exists(db, project_id):
        raise _not_found(project_id)
    background_tasks.add_task(recount_items, resources, project_id)
    return TaskAccepted(detail=f"item count of project {project_id} is being recomputed")
