"""Items: a full export streamed from a server-side cursor, one chunk per batch of rows."""

import csv
import io
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic_core import to_json

from ..db import queries
from ..db.queries import EXPORT_COLUMNS
from ..errors import documented
from ..lifespan import ResourcesDep
from ..streaming import ClosingStreamingResponse

router = APIRouter(prefix="/items", tags=["items"], responses=documented(503))

CSV_HEADER = ",".join(EXPORT_COLUMNS) + "\r\n"


class ExportFormat(StrEnum):
    ndjson = "ndjson"
    csv = "csv"


def ndjson_chunk(rows: Sequence[Sequence[Any]]) -> bytes:
    return b"".join(to_json(dict(zip(EXPORT_COLUMNS, row, strict=True))) + b"\n" for row in rows)


def csv_chunk(rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


@router.get(
    "/export",
    response_class=ClosingStreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
async def export_items(
    resources: ResourcesDep,
    export_format: Annotated[ExportFormat, Query(alias="format")] = ExportFormat.ndjson,
) -> ClosingStreamingResponse:
    """Every item, streamed: memory stays flat whatever the row count."""
    batch_size = resources.settings.app.export_batch_size
    encode = ndjson_chunk if export_format is ExportFormat.ndjson else csv_chunk

    async def body() -> AsyncGenerator[bytes]:
        if export_format is ExportFormat.csv:
            yield CSV_HEADER.encode()
        # Its own connection: the stream outlives the request's dependencies. aclosing: when
        # the client goes away, the batches give their connection back now, not at GC time.
        async with aclosing(queries.item_batches(resources, batch_size)) as batches:
            async for rows in batches:
                yield encode(rows)

    media_type = "application/x-ndjson" if export_format is ExportFormat.ndjson else "text/csv"
    filename = f"items.{export_format.value}"
    return ClosingStreamingResponse(
        body(),
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
