"""Projects: eager-loaded owners, offset and keyset pages, cached reads, invalidating writes,
and a background recount.

Who sees what: a private project is its owner's alone (to anyone else it does not exist: 404);
only the owner writes (403 on a public project, 404 on a private one; 401 without a token). The
shared cache holds what an anonymous caller sees; a signed-in caller's pages are cached under
their user id (http_cache.py).

The three reads take their resources with ``resources_of(request)`` instead of a ``*Dep``
(deps.py): on a cache hit, or an uncached page, resolving one more dependency is a measurable
part of the request. Every other route declares what it needs."""

import logging

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response, status

from ..cache_keys import LIST_NAMESPACE, invalidate_project, project_key
from ..db import queries
from ..db.engine import DatabaseUnavailable
from ..deps import CacheDep, DbDep, Resources, ResourcesDep, resources_of
from ..errors import documented
from ..http_cache import VARY, cached_json, json_with_etag
from ..pagination import (
    CursorPage,
    KeysetDep,
    OffsetDep,
    Page,
    cursor_page_json,
    next_cursor,
    page_start,
)
from ..schemas import ProjectCreate, ProjectPublic, ProjectUpdate, RowId, TaskAccepted
from ..security import CurrentUserId, caller_of, unauthorized
from .route_helpers import cached_page, viewer_parts

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/projects", tags=["projects"], responses=documented(503))
# Reads take an optional token: /docs sends it when authorized, and anonymous calls stay valid.
OPTIONAL_TOKEN: dict[str, object] = {"security": [{"OAuth2PasswordBearer": []}, {}]}

ProjectId = RowId


@router.get(
    "",
    response_model=Page[ProjectPublic],
    responses=documented(304, 401),
    openapi_extra=OPTIONAL_TOKEN,
)
async def list_projects(request: Request, params: OffsetDep) -> Response:
    viewer = caller_of(request)
    resources = resources_of(request)

    async def items(db: queries.Db) -> bytes:
        async def id_at(position: int) -> int | None:
            return await queries.project_id_at(db, position, viewer=viewer)

        start = await page_start(
            resources.cache, LIST_NAMESPACE, viewer_parts(viewer), params.offset, id_at
        )
        return await queries.project_page_json(
            db,
            after_id=start.after_id,
            offset=start.offset,
            limit=params.page_size,
            viewer=viewer,
        )

    async def count(db: queries.Db) -> int:
        return await queries.count_projects(db, viewer)

    return await cached_page(
        request, resources, LIST_NAMESPACE, params, viewer=viewer, items=items, count=count
    )


@router.get(
    "/cursor",
    response_model=CursorPage[ProjectPublic],
    responses=documented(401),
    openapi_extra=OPTIONAL_TOKEN,
)
async def list_projects_by_cursor(request: Request, params: KeysetDep) -> Response:
    viewer = caller_of(request)
    resources = resources_of(request)
    async with queries.open_db(resources.engine) as db:
        page = await queries.projects_after_json(
            db, params.after_id, limit=params.limit, viewer=viewer
        )
    cursor = next_cursor(resources.settings, page.last_key) if page.more else None
    headers = {"Vary": VARY}
    if viewer is not None:
        headers["Cache-Control"] = "private"
    return Response(
        cursor_page_json(page.json, cursor), media_type="application/json", headers=headers
    )


def _not_found(project_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"project {project_id} not found")


class _PrivateProject(Exception):
    """Raised by a load instead of returning a private project: it never enters the shared
    cache, and only its owner gets it."""

    def __init__(self, body: bytes, owner_id: int) -> None:
        self.body = body
        self.owner_id = owner_id


@router.get(
    "/{project_id:int}",
    response_model=ProjectPublic,
    responses=documented(304, 401, 404),
    openapi_extra=OPTIONAL_TOKEN,
)
async def get_project(project_id: ProjectId, request: Request) -> Response:
    resources = resources_of(request)
    cache = resources.cache
    viewer = caller_of(request)

    async def load() -> bytes:
        async with queries.open_db(resources.engine) as db:
            project = await queries.get_project_json(db, project_id)
        if project is None:
            raise _not_found(project_id)
        owner_id, private = project.keys
        if private:
            raise _PrivateProject(project.json, owner_id)
        return project.json

    try:
        # A public project's body is the same for everyone: the shared key serves all callers.
        key = project_key(cache, project_id)
        return await cached_json(request, cache, key, load, viewer=viewer)
    except _PrivateProject as private:
        if viewer is None or private.owner_id != viewer:
            raise _not_found(project_id) from None
        return json_with_etag(request, private.body, viewer=viewer)  # the owner's: not cached


async def check_owner(db: queries.Db, project_id: int, caller: int) -> None:
    """Only the owner writes: to anyone else a private project does not exist (404), a
    public one is forbidden (403)."""
    found = await queries.project_owner(db, project_id)
    if found is None:
        raise _not_found(project_id)
    owner_id, private = found
    if owner_id != caller:
        if private:
            raise _not_found(project_id)
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"project {project_id} is not yours")


@router.post("", status_code=status.HTTP_201_CREATED, responses=documented(400, 401, 413))
async def create_project(
    body: ProjectCreate, caller: CurrentUserId, db: DbDep, cache: CacheDep
) -> ProjectPublic:
    """A project owned by the caller."""
    project = await queries.create_project(db, caller, body)
    if project is None:  # the token's user was deleted since it was issued
        raise unauthorized("the access token's user no longer exists")
    await cache.invalidate_namespace(LIST_NAMESPACE)
    return project


@router.patch("/{project_id:int}", responses=documented(400, 401, 403, 404, 413))
async def update_project(
    project_id: ProjectId, body: ProjectUpdate, caller: CurrentUserId, db: DbDep, cache: CacheDep
) -> ProjectPublic:
    await check_owner(db, project_id, caller)
    project = await queries.update_project(db, project_id, body.model_dump(exclude_unset=True))
    if project is None:
        raise _not_found(project_id)
    await invalidate_project(cache, project_id)
    return project


@router.delete(
    "/{project_id:int}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=documented(401, 403, 404),
)
async def delete_project(
    project_id: ProjectId, caller: CurrentUserId, db: DbDep, cache: CacheDep
) -> None:
    await check_owner(db, project_id, caller)
    if not await queries.delete_project(db, project_id):
        raise _not_found(project_id)
    await invalidate_project(cache, project_id)


async def recount_items(resources: Resources, project_id: int) -> None:
    """Runs after the 202: recompute the denormalized item_count of a project. The client has its
    answer, so a failure is logged here; raised, it would reach the server as an error after the
    response and cost the client its keep-alive connection."""
    try:
        async with queries.open_db(resources.engine) as db:
            await queries.recount_items(db, project_id)
    except DatabaseUnavailable:  # the outage itself is logged once, by db/engine.py
        logger.warning("recount of project %d skipped: the database is unavailable", project_id)
        return
    except Exception:
        logger.exception("recount of project %d failed", project_id)
        return
    await invalidate_project(resources.cache, project_id)


@router.post(
    "/{project_id:int}/recount",
    status_code=status.HTTP_202_ACCEPTED,
    responses=documented(401, 403, 404),
)
async def schedule_recount(
    project_id: ProjectId,
    caller: CurrentUserId,
    db: DbDep,
    resources: ResourcesDep,
    background_tasks: BackgroundTasks,
) -> TaskAccepted:
    await check_owner(db, project_id, caller)
    background_tasks.add_task(recount_items, resources, project_id)
    return TaskAccepted(detail=f"item count of project {project_id} is being recomputed")
