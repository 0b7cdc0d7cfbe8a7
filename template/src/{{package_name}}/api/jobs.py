"""Jobs: an import of items, streamed to storage under a size limit and run by the job queue
(jobs.py), and the job's status.

The import answers 202 once the body is stored and the job queued; ``Location`` names the job,
which only its creator may read (to anyone else it does not exist: 404). Only the project's
owner may import (api/projects.py's rules). The body is checked as it streams: UTF-8 text, and
for CSV a header naming the item fields; each row is checked by the job, and a bad row is an
error of the job with its line number, not of the request.
"""

import codecs
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request, Response, status

from ..db import jobs as job_rows
from ..deps import DbDep, ResourcesDep
from ..errors import documented, invalid
from ..items_import import MEDIA_TYPES, csv_header_problem, first_line
from ..job_queue import enqueue
from ..jobs import IMPORT_ITEMS
from ..schemas import JobPublic, RowId
from ..security import CurrentUserId
from .body_storage import BINARY_SCHEMA, refuse_declared_size, store_body
from .projects import check_owner

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], responses=documented(503))

IMPORTS_SUBDIR = "imports"
# What the route keeps of the body's start, to check a CSV header.
HEAD_BYTES = 64 * 1024

_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {media_type: {"schema": BINARY_SCHEMA} for media_type in MEDIA_TYPES},
    }
}


def _unsupported(media_type: str) -> HTTPException:
    return HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"unsupported Content-Type {media_type or '(none)'!r}: send application/x-ndjson (one"
        " JSON object of item fields a line) or text/csv (a header row naming the fields)",
    )


@router.post(
    "/projects/{project_id:int}/items/import",
    status_code=status.HTTP_202_ACCEPTED,
    responses=documented(401, 403, 404, 413, 415),
    openapi_extra=_IMPORT_BODY,
)
async def import_items(
    project_id: RowId,
    request: Request,
    response: Response,
    caller: CurrentUserId,
    db: DbDep,
    resources: ResourcesDep,
) -> JobPublic:
    """Items of the project, one a line: NDJSON (`Content-Type: application/x-ndjson`) or CSV
    (`text/csv`, a header row). Answers 202 with the job (`Location` names it); rows that fail
    validation are skipped and listed in the job's errors with their line numbers."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    import_format = MEDIA_TYPES.get(media_type)
    if import_format is None:
        raise _unsupported(media_type)
    await check_owner(db, project_id, caller)
    settings = resources.settings
    limit = settings.jobs.max_import_bytes
    refuse_declared_size(request, limit, what="import", limit=limit)
    # Absolute: the worker that reads it may run elsewhere (sharing the directory).
    directory = await anyio.Path(settings.app.upload_dir, IMPORTS_SUBDIR).resolve()
    await directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{secrets.token_hex(16)}.{import_format}"
    body = _Utf8Body(request.stream())

    def accept(size: int) -> None:
        body.check_complete()
        if not body.head.strip():
            raise invalid(("body",), "the import is empty: send one item a line")
        if import_format == "csv" and (problem := csv_header_problem(first_line(body.head))):
            raise invalid(("body",), problem)

    await store_body(body, target, what="import", limit=limit, accept=accept)
    try:
        job = await job_rows.create_import(
            db,
            project_id=project_id,
            creator_id=caller,
            source=str(target),
            source_format=import_format,
        )
    except BaseException:  # the database went away (503): no job, so no file
        await target.unlink(missing_ok=True)
        raise
    try:
        await enqueue(resources.broker, IMPORT_ITEMS, job.id)
    except Exception:
        logger.exception("queueing import job %d failed", job.id)
        await job_rows.fail(db, job.id, "the job queue was unavailable")
        await target.unlink(missing_ok=True)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the job queue is unavailable, retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    response.headers["Location"] = request.app.url_path_for("get_job", job_id=str(job.id))
    return job


class _Utf8Body:
    """The body's chunks, checked to be UTF-8 text as they pass (422 at the first bad byte),
    its first HEAD_BYTES kept in ``head``."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._size = 0
        self.head = b""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise invalid(
                    ("body",), f"not UTF-8 text: byte {self._size + exc.start} cannot be decoded"
                ) from None
            self._size += len(chunk)
            if len(self.head) < HEAD_BYTES:
                self.head += chunk[: HEAD_BYTES - len(self.head)]
            yield chunk

    def check_complete(self) -> None:
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise invalid(("body",), "not UTF-8 text: the body ends inside a character") from None


@router.get("/jobs/{job_id:int}", responses=documented(401, 404))
async def get_job(job_id: RowId, response: Response, caller: CurrentUserId, db: DbDep) -> JobPublic:
    """The job's status and counts; its creator's alone."""
    found = await job_rows.get_job(db, job_id)
    if found is None or found[0] != caller:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    response.headers["Cache-Control"] = "no-store"  # it changes while the job runs
    return found[1]
