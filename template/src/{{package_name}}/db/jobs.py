"""Jobs' data: the ``jobs`` table and an import's batches. SQLAlchemy Core on ``models`` (both
ORMs map the same tables there, on the ``Db``'s engine), so the statements that make a
re-delivered job harmless exist once: each batch of rows is inserted in the transaction that
moves the job's high-water mark (``position``, the input lines done), under a lock on the job's
row; a second run of the same job finds the mark moved and inserts nothing twice."""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..schemas import JobError, JobPublic
from .models import Item, Job, Project
from .queries import Db

# What a job's status says, and which of them a delivery may still run.
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
UNFINISHED = (QUEUED, RUNNING)
# The errors a job keeps (each with its line); failed_rows counts them all.
MAX_ERRORS = 20
ITEM_COLUMNS = ("project_id", "name", "price_cents", "quantity")

# Prisma's DateTime columns are TIMESTAMP WITHOUT TIME ZONE (UTC by convention); SQLAlchemy's here
# are WITH: hand each the kind of datetime it stores.
_AWARE = bool(getattr(Job.__table__.c.finished_at.type, "timezone", False))


def _now() -> datetime:
    now = datetime.now(UTC)
    return now if _AWARE else now.replace(tzinfo=None)


_PUBLIC = (
    Job.id,
    Job.status,
    Job.processed,
    Job.failed_rows,
    Job.errors,
    Job.attempts,
    Job.created_at,
    Job.finished_at,
)


def _public(row: Any) -> JobPublic:
    return JobPublic(
        id=row.id,
        status=row.status,
        processed=row.processed,
        failed_rows=row.failed_rows,
        errors=[JobError.model_validate(error) for error in json.loads(row.errors)],
        attempts=row.attempts,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


async def create_import(
    db: Db, *, project_id: int, creator_id: int, source: str, source_format: str
) -> JobPublic:
    values = {
        "kind": "items_import",
        "status": QUEUED,
        "project_id": project_id,
        "creator_id": creator_id,
        "source": source,
        "source_format": source_format,
        "position": 0,
        "processed": 0,
        "failed_rows": 0,
        "errors": "[]",
        "attempts": 0,
    }
    async with db.engine.begin() as conn:
        row = (await conn.execute(insert(Job).values(values).returning(*_PUBLIC))).one()
    return _public(row)


async def get_job(db: Db, job_id: int) -> tuple[int, JobPublic] | None:
    """``(creator_id, job)``; None when there is no such job."""
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(Job.creator_id, *_PUBLIC).where(Job.id == job_id))).first()
    return None if row is None else (row.creator_id, _public(row))


@dataclass(frozen=True, slots=True)
class ImportRun:
    """What a delivery of an import job needs to run it."""

    job_id: int
    project_id: int
    source: str
    source_format: str
    position: int
    attempts: int


async def start_import(db: Db, job_id: int) -> ImportRun | None:
    """Mark the job running and count the attempt; None when it needs no run (finished, or
    gone with its project)."""
    async with db.engine.begin() as conn:
        row = (
            await conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(UNFINISHED))
                .values(status=RUNNING, attempts=Job.attempts + 1)
                .returning(
                    Job.project_id, Job.source, Job.source_format, Job.position, Job.attempts
                )
            )
        ).first()
    if row is None:
        return None
    return ImportRun(job_id, row[0], row[1], row[2], row[3], row[4])


async def unfinished_jobs(db: Db) -> list[int]:
    async with db.engine.connect() as conn:
        rows = await conn.scalars(select(Job.id).where(Job.status.in_(UNFINISHED)).order_by(Job.id))
        return list(rows)


async def count_unfinished(db: Db) -> dict[str, int]:
    """How many jobs are queued and how many running (the index on ``status``)."""
    statement = (
        select(Job.status, func.count()).where(Job.status.in_(UNFINISHED)).group_by(Job.status)
    )
    async with db.engine.connect() as conn:
        counted = dict((await conn.execute(statement)).all())
    return {status: counted.get(status, 0) for status in UNFINISHED}


async def commit_batch(
    db: Db,
    run: ImportRun,
    *,
    start: int,
    end: int,
    rows: Sequence[dict[str, Any]],
    errors: Sequence[JobError],
) -> bool:
    """Move the job's mark from ``start`` to ``end`` and insert ``rows`` (input lines ``start``
    to ``end``), in one transaction. False, with nothing written, when the mark is not at
    ``start`` any more (another run of the job got there first) or the job is gone."""
    async with db.engine.begin() as conn:
        # The mark moves first, only from ``start``: this UPDATE takes the job's row (SQLite:
        # the database's write lock) until the transaction ends, so a second run of the job
        # waits here and then finds the mark moved. (A SELECT ... FOR UPDATE would not do on
        # SQLite: it locks nothing, and two runs inserted the same rows.)
        moved = (
            await conn.execute(
                update(Job)
                .where(Job.id == run.job_id, Job.position == start)
                .values(
                    position=end,
                    processed=Job.processed + len(rows),
                    failed_rows=Job.failed_rows + len(errors),
                )
                .returning(Job.errors)
            )
        ).first()
        if moved is None:
            return False
        if rows:
            await _insert_items(conn, run.project_id, rows)
        kept = json.loads(moved.errors)
        if errors and len(kept) < MAX_ERRORS:
            kept += [error.model_dump() for error in errors[: MAX_ERRORS - len(kept)]]
            await conn.execute(
                update(Job).where(Job.id == run.job_id).values(errors=json.dumps(kept))
            )
    return True


async def _insert_items(
    conn: AsyncConnection, project_id: int, rows: Sequence[dict[str, Any]]
) -> None:
    if conn.dialect.name == "postgresql":
        # COPY: one round trip and the server's fastest load path, inside this transaction (the
        # driver connection is the one the transaction runs on).
        raw = await conn.get_raw_connection()
        records = [(project_id, row["name"], row["price_cents"], row["quantity"]) for row in rows]
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            Item.__tablename__, records=records, columns=ITEM_COLUMNS
        )
        return
    await conn.execute(insert(Item), [{"project_id": project_id, **row} for row in rows])


async def recount_items(db: Db, project_id: int) -> None:
    """The project's denormalized item count, recomputed in one UPDATE."""
    count = select(func.count()).where(Item.project_id == project_id).scalar_subquery()
    async with db.engine.begin() as conn:
        await conn.execute(update(Project).where(Project.id == project_id).values(item_count=count))


async def succeed(db: Db, job_id: int) -> bool:
    """The job succeeded; False when another run ended it first."""
    async with db.engine.begin() as conn:
        done = await conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == RUNNING)
            .values(status=SUCCEEDED, finished_at=_now())
        )
    return bool(done.rowcount)


async def requeue(db: Db, job_id: int) -> None:
    """The job waits in the queue again (its run stopped between batches)."""
    async with db.engine.begin() as conn:
        await conn.execute(
            update(Job).where(Job.id == job_id, Job.status == RUNNING).values(status=QUEUED)
        )


async def fail(db: Db, job_id: int, message: str) -> None:
    """The job failed, with ``message`` as its last error (no line: the job's own)."""
    async with db.engine.begin() as conn:
        found = await conn.scalar(select(Job.errors).where(Job.id == job_id).with_for_update())
        if found is None:
            return
        kept = [*json.loads(found)[: MAX_ERRORS - 1], {"line": None, "message": message}]
        await conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(UNFINISHED))
            .values(status=FAILED, finished_at=_now(), errors=json.dumps(kept))
        )
