"""Projects: eager-loaded owners, offset and keyset pages, cached reads, invalidating writes,
and a background recount."""

import logging

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status

from ..cache import Cache
from ..db import queries
from ..db.engine import DatabaseUnavailable
from ..db.json_rows import json_array
from ..db.queries import DbDep
from ..errors import documented, invalid
from ..http_cache import cached_json, json_with_etag
from ..lifespan import CacheDep, Resources, ResourcesDep, resources_of
from ..pagination import (
    CursorPage,
    KeysetDep,
    OffsetDep,
    OffsetParams,
    Page,
    cursor_page_json,
    next_cursor,
    page_json,
)
from ..schemas import ProjectCreate, ProjectPublic, ProjectUpdate, RowId, TaskAccepted

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/projects", tags=["projects"], responses=documented(503))

LIST_NAMESPACE = "projects-list"
ProjectId = RowId


def project_key(cache: Cache, project_id: int) -> str:
    return cache.key("projects", project_id)


async def invalidate_project(cache: Cache, project_id: int) -> None:
    await cache.delete(project_key(cache, project_id))
    await cache.invalidate_namespace(LIST_NAMESPACE)


async def _total(resources: Resources) -> int:
    """The project count, cached in the list namespace: every write that can change it
    invalidates that namespace, so a page never shows a count older than its items."""
    cache = resources.cache

    async def count() -> bytes:
        return str(await queries.count_projects(resources)).encode()

    return int(await cache.get_or_set(await cache.namespace_key(LIST_NAMESPACE, "total"), count))


async def _load_page(resources: Resources, params: OffsetParams) -> bytes:
    items = await queries.project_page_json(resources, offset=params.offset, limit=params.page_size)
    return page_json(total=await _total(resources), params=params, items=items)


@router.get("", response_model=Page[ProjectPublic], responses=documented(304))
async def list_projects(request: Request, params: OffsetDep) -> Response:
    resources = resources_of(request)

    async def load() -> bytes:
        return await _load_page(resources, params)

    if params.page > resources.settings.cache.cached_list_pages:
        return json_with_etag(request, await load())
    cache = resources.cache
    key = await cache.namespace_key(LIST_NAMESPACE, params.page, params.page_size)
    return await cached_json(request, cache, key, load)


@router.get("/cursor", response_model=CursorPage[ProjectPublic])
async def list_projects_by_cursor(resources: ResourcesDep, params: KeysetDep) -> Response:
    rows = await queries.projects_after_json(resources, params.after_id, limit=params.limit + 1)
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    cursor = next_cursor(resources.settings, rows[-1].keys[0]) if has_more else None
    return Response(cursor_page_json(json_array(rows), cursor), media_type="application/json")


def _not_found(project_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")


@router.get("/{project_id:int}", response_model=ProjectPublic, responses=documented(304, 404))
async def get_project(project_id: ProjectId, request: Request) -> Response:
    resources = resources_of(request)
    cache = resources.cache

    async def load() -> bytes:
        project = await queries.get_project_json(resources, project_id)
        if project is None:
            raise _not_found(project_id)
        return project

    return await cached_json(request, cache, project_key(cache, project_id), load)


@router.post("", status_code=status.HTTP_201_CREATED, responses=documented(400, 413))
async def create_project(body: ProjectCreate, db: DbDep, cache: CacheDep) -> ProjectPublic:
    project = await queries.create_project(db, body)
    if project is None:
        raise invalid(("body", "owner_id"), f"user {body.owner_id} not found")
    await cache.invalidate_namespace(LIST_NAMESPACE)
    return project


@router.patch("/{project_id:int}", responses=documented(400, 404, 413))
async def update_project(
    project_id: ProjectId, body: ProjectUpdate, db: DbDep, cache: CacheDep
) -> ProjectPublic:
    project = await queries.update_project(db, project_id, body.model_dump(exclude_unset=True))
    if project is None:
        raise _not_found(project_id)
    await invalidate_project(cache, project_id)
    return project


@router.delete(
    "/{project_id:int}", status_code=status.HTTP_204_NO_CONTENT, responses=documented(404)
)
async def delete_project(project_id: ProjectId, db: DbDep, cache: CacheDep) -> None:
    if not await queries.delete_project(db, project_id):
        raise _not_found(project_id)
    await invalidate_project(cache, project_id)


async def recount_items(resources: Resources, project_id: int) -> None:
    """Runs after the 202: recompute the denormalized item_count of a project. The client has its
    answer, so a failure is logged here; raised, it would reach the server as an error after the
    response and cost the client its keep-alive connection."""
    try:
        async with queries.open_db(resources) as db:
            await queries.recount_items(db, project_id)
    except DatabaseUnavailable:  # the outage itself is logged once, by db/engine.py
        logger.warning("recount of project %d skipped: the database is unavailable", project_id)
        return
    except Exception:
        logger.exception("recount of project %d failed", project_id)
        return
    await invalidate_project(resources.cache, project_id)


@router.post(
    "/{project_id:int}/recount", status_code=status.HTTP_202_ACCEPTED, responses=documented(404)
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
