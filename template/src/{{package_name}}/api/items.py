"""Items: a full export, streamed as PostgreSQL's own COPY output (or from a server-side cursor
on other databases), on a connection checked out before the response starts."""

from fastapi import APIRouter

from ..db import queries
from ..db.export import ExportFormat
from ..deps import ResourcesDep
from ..errors import documented
from ..security import OptionalCallerId
from ..streaming import ClosingStreamingResponse
from .route_helpers import EXPORT_RESPONSES, ExportFormatQuery, export_response

router = APIRouter(prefix="/items", tags=["items"], responses=documented(503))


@router.get(
    "/export",
    response_class=ClosingStreamingResponse,
    responses={**EXPORT_RESPONSES, **documented(401)},
)
async def export_items(
    resources: ResourcesDep,
    viewer: OptionalCallerId,
    export_format: ExportFormatQuery = ExportFormat.ndjson,
) -> ClosingStreamingResponse:
    """Every item the caller may see (none of another user's private projects), streamed:
    memory stays flat whatever the row count."""
    return await export_response(resources, queries.export_query(viewer), export_format, "items")
