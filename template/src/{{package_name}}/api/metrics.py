"""GET /metrics, for Prometheus (observability/metrics.py holds what it reports)."""

import logging

import anyio
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from ..db import jobs as job_rows
from ..db.engine import DatabaseUnavailable, SchemaBehind
from ..deps import DbDep
from ..observability.metrics import exposition

logger = logging.getLogger(__name__)
router = APIRouter()
# A scrape does not wait out an exhausted pool (Prometheus's own timeout is 10 s).
COUNT_TIMEOUT_SECONDS = 2.0


@router.get("/metrics", include_in_schema=False)
async def metrics(db: DbDep) -> Response:
    try:
        with anyio.fail_after(COUNT_TIMEOUT_SECONDS):
            unfinished = await job_rows.count_unfinished(db)
    except (DatabaseUnavailable, SchemaBehind, SQLAlchemyError, TimeoutError) as exc:
        # The rest is still worth scraping: the jobs' gauge is left out rather than wrong.
        logger.warning("/metrics without jobs_unfinished: %s", exc or type(exc).__name__)
        unfinished = None
    text = await anyio.to_thread.run_sync(exposition, unfinished)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
