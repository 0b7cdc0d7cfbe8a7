"""Items: a full export, streamed as PostgreSQL's own COPY output (or from a server-side cursor
on other databases), on a connection checked out before the response starts."""

from typing import Annotated

import anyio
from fastapi import APIRouter, Query

from ..db import queries
from ..db.export import ExportFormat, export
from ..deps import ResourcesDep
from ..errors import documented
from ..security import OptionalCallerId
from ..streaming import ClosingStreamingResponse

router = APIRouter(prefix="/items", tags=["items"], responses=documented(503))


@router.get(
    "/export",
    response_class=ClosingStreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}, **documented(401)},
)
async def export_items(
    resources: ResourcesDep,
    viewer: OptionalCallerId,
    export_format: Annotated[ExportFormat, Query(alias="format")] = ExportFormat.ndjson,
) -> ClosingStreamingResponse:
    """Every item the caller may see (none of another user's private projects), streamed:
    memory stays flat whatever the row count."""
    # Checked out here, before the response starts: an exhausted pool is the same 503 +
    # Retry-After as on every route, not a 500 after the headers went out.
    conn = await resources.engine.connect()
    batch_size = resources.settings.app.export_batch_size
    query = queries.export_query(viewer)
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
    filename = f"items.{export_format.value}"
    return ClosingStreamingResponse(
        chunks,
        first=first,
        media_type=export_format.media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        on_close=conn.close,
    )
