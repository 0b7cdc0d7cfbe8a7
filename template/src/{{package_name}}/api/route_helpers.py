"""What list and export routes share, so that a new resource calls these instead of copying a
route: ``cached_page`` (an offset page, cached, with its total) and ``export_response`` (a
streamed NDJSON or CSV export). ``api/projects.py`` and ``api/items.py`` use them."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
from fastapi import Query, Request, Response
from sqlalchemy import Select

from ..db import queries
from ..db.export import ExportFormat, export
from ..deps import Resources
from ..http_cache import cached_json, json_with_etag
from ..pagination import OffsetParams, page_json
from ..streaming import ClosingStreamingResponse

# An export route's format parameter: ``export_format: ExportFormatQuery = ExportFormat.ndjson``
# (``?format=ndjson`` or ``csv``).
ExportFormatQuery = Annotated[ExportFormat, Query(alias="format")]
# An export route's documented answers, for ``@router.get(..., responses=EXPORT_RESPONSES)``.
EXPORT_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {ExportFormat.ndjson.media_type: {}, ExportFormat.csv.media_type: {}}}
}


def viewer_parts(viewer: int | None) -> tuple[object, ...]:
    """Cache key parts for what ``viewer`` sees: nothing for an anonymous caller (the shared
    keys), the user id for a signed-in one (their own keys)."""
    return () if viewer is None else ("user", viewer)


async def cached_page(
    request: Request,
    resources: Resources,
    namespace: str,
    params: OffsetParams,
    *,
    viewer: int | None,
    items: Callable[[queries.Db], Awaitable[bytes]],
    count: Callable[[queries.Db], Awaitable[int]],
) -> Response:
    """``Page[T]`` JSON of ``items`` (the page's items as a JSON array) and ``count`` (the
    total), with an ETag. The first ``CACHE_CACHED_LIST_PAGES`` pages are cached under
    ``namespace``, per viewer, page and size, and so is the total: every write that can change
    the list must ``cache.invalidate_namespace(namespace)``, so a page never shows a count older
    than its items. Both queries run on one ``Db``, only on a miss."""
    cache, parts = resources.cache, viewer_parts(viewer)

    async def total(db: queries.Db) -> int:
        async def counted() -> bytes:
            return str(await count(db)).encode()

        key = await cache.namespace_key(namespace, "total", *parts)
        return int(await cache.get_or_set(key, counted))

    async def load() -> bytes:
        async with queries.open_db(resources.engine) as db:
            page_items = await items(db)
            page_total = await total(db)
        return page_json(total=page_total, params=params, items=page_items)

    if params.page > resources.settings.cache.cached_list_pages:
        return json_with_etag(request, await load(), viewer=viewer)
    key = await cache.namespace_key(namespace, *parts, params.page, params.page_size)
    return await cached_json(request, cache, key, load, viewer=viewer)


async def export_response(
    resources: Resources, query: Select[Any], export_format: ExportFormat, name: str
) -> ClosingStreamingResponse:
    """The rows of ``query`` streamed as ``export_format`` (db/export.py), as the attachment
    ``<name>.<format>``: memory stays flat whatever the row count."""
    # Checked out here, before the response starts: an exhausted pool is the same 503 +
    # Retry-After as on every route, not a 500 after the headers went out.
    conn = await resources.engine.connect()
    batch_size = resources.settings.app.export_batch_size
    chunks = export(conn, query, export_format, batch_size=batch_size)
    try:
        # The statement runs up to its first rows before the response starts: its time is in
        # Server-Timing, and its failure is answered as on every route, not as a cut stream.
        first = await anext(chunks, b"")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await chunks.aclose()
            await conn.close()
        raise
    filename = f"{name}.{export_format.value}"
    return ClosingStreamingResponse(
        chunks,
        first=first,
        media_type=export_format.media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        on_close=conn.close,
    )
