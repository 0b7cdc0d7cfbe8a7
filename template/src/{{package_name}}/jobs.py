"""The jobs the queue runs (job_queue.py), and how they run.

Delivery is at least once: a job may run again after a crash, or twice at once after a
redelivery. An import is made harmless to run again by its batches (db/jobs.py): each inserts
its rows in the transaction that moves the job's high-water mark, so a second run starts after
the last committed batch and inserts no row twice. Once done, the project's item count is
recomputed and its cached pages invalidated, once, where every instance sees it (the shared
cache).
"""

import asyncio
import contextlib
import enum
import logging
import time
from typing import Annotated

import anyio
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from taskiq import AsyncBroker, Context, InMemoryBroker, TaskiqDepends, TaskiqEvents, TaskiqState

from .cache_keys import invalidate_project
from .db import jobs as job_rows
from .db.engine import DatabaseUnavailable, SchemaBehind
from .db.jobs import ImportRun
from .db.queries import Db, open_db
from .deps import Resources
from .items_import import Batch, ImportReader
from .job_queue import enqueue
from .observability.logs import job_logging
from .observability.metrics import observe_job_run
from .observability.tracing import job_span

logger = logging.getLogger(__name__)

IMPORT_ITEMS = "items_import"
# What a later attempt may get past: the database down or restarting, its pool exhausted, a
# connection cut.
TRANSIENT_ERRORS = (DatabaseUnavailable, PoolTimeoutError, ConnectionError, TimeoutError)
MAX_BACKOFF = 60.0


async def run_import(
    resources: Resources, job_id: int, stopping: asyncio.Event | None = None
) -> None:
    """Run (or resume) the import job ``job_id``; a job that needs no run is left alone. Once
    ``stopping`` is set (the worker got SIGTERM) the run ends after its current batch, and the
    job is queued again. Every line it logs names the job; /metrics times the run by how it
    ended."""
    started = time.perf_counter()
    with job_logging(job_id):
        async with open_db(resources.engine) as db:
            ended = await _run_import(resources, db, job_id, stopping)
    observe_job_run(IMPORT_ITEMS, ended, time.perf_counter() - started)


class Ended(enum.StrEnum):
    """How a run ended (/metrics times runs by it)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good
    RETRIED = "retried"  # a transient error: queued again
    STOPPED = "stopped"  # the worker stopping: queued again
    SKIPPED = "skipped"  # nothing to run: finished already, or another run has it


async def _run_import(
    resources: Resources, db: Db, job_id: int, stopping: asyncio.Event | None
) -> Ended:
    settings = resources.settings.jobs
    try:
        run = await job_rows.start_import(db, job_id)
    except TRANSIENT_ERRORS as exc:
        # Not even started (nor counted): try again once the database may be back.
        logger.warning("import job %d not started: %s; again in %.0f s", job_id, exc, MAX_BACKOFF)
        await asyncio.sleep(MAX_BACKOFF)
        await enqueue(resources.broker, IMPORT_ITEMS, job_id)
        return Ended.RETRIED
    if run is None:
        return Ended.SKIPPED
    logger.info("import job %d: attempt %d, from line %d", job_id, run.attempts, run.position)
    try:
        outcome = await _import_batches(resources, db, run, stopping)
    except TRANSIENT_ERRORS as exc:
        if run.attempts < settings.max_attempts:
            pause = min(settings.retry_backoff_seconds * 2 ** (run.attempts - 1), MAX_BACKOFF)
            logger.warning(
                "import job %d: %s on attempt %d, again in %.1f s", job_id, exc, run.attempts, pause
            )
            await asyncio.sleep(pause)
            await _queue_again(resources, db, job_id)
            return Ended.RETRIED
        logger.error("import job %d failed on its last attempt: %s", job_id, exc)
        await _project_changed(resources, db, run)
        await job_rows.fail(db, job_id, f"{_describe(exc)} (attempt {run.attempts}, the last)")
        ended = Ended.FAILED
    except Exception as exc:
        logger.exception("import job %d failed", job_id)
        await _project_changed(resources, db, run)
        await job_rows.fail(db, job_id, _describe(exc))
        ended = Ended.FAILED
    else:
        if outcome is _Outcome.STOPPED:
            await _queue_again(resources, db, job_id)
            return Ended.STOPPED
        if outcome is _Outcome.OVERTAKEN:
            return Ended.SKIPPED
        await _project_changed(resources, db, run)
        if not await job_rows.succeed(db, job_id):
            return Ended.SKIPPED
        logger.info("import job %d succeeded", job_id)
        ended = Ended.SUCCEEDED
    await anyio.Path(run.source).unlink(missing_ok=True)
    return ended


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _queue_again(resources: Resources, db: Db, job_id: int) -> None:
    # Its status says queued again if the database answers; a run starts a running job too.
    with contextlib.suppress(*TRANSIENT_ERRORS):
        await job_rows.requeue(db, job_id)
    await enqueue(resources.broker, IMPORT_ITEMS, job_id)
    logger.info("import job %d queued again", job_id)


async def _project_changed(resources: Resources, db: Db, run: ImportRun) -> None:
    """The project's item count and its cached reads show the committed batches, before the
    job says it ended: whoever sees it ended sees its rows counted."""
    await job_rows.recount_items(db, run.project_id)
    await invalidate_project(resources.cache, run.project_id)


class _Outcome(enum.Enum):
    DONE = "done"
    STOPPED = "stopped"  # between batches, as asked
    OVERTAKEN = "overtaken"  # another run of the job moved its mark first: that run goes on


async def _import_batches(
    resources: Resources, db: Db, run: ImportRun, stopping: asyncio.Event | None
) -> "_Outcome":
    """Import the rows after the job's mark, a batch a transaction. The next batch is read and
    validated (in a thread) while the database writes this one: the import runs at about the
    pace of the slower of the two, not of both in turn."""
    if not await anyio.Path(run.source).is_file():
        raise FileNotFoundError(
            "the import's file is gone from APP_UPLOAD_DIR (the web process and the worker must"
            " share it)"
        )
    batch_size = resources.settings.jobs.batch_size
    reader = await anyio.to_thread.run_sync(
        lambda: ImportReader(run.source, run.source_format, start=run.position)
    )

    def read_ahead() -> "asyncio.Task[Batch]":
        return asyncio.ensure_future(anyio.to_thread.run_sync(reader.read_batch, batch_size))

    def close_when_read(read: "asyncio.Task[Batch]") -> None:
        if not read.cancelled():
            read.exception()  # a read error after the run ended changes nothing
        reader.close()

    reading = read_ahead()
    try:
        start = run.position
        while True:
            batch = await reading
            if batch.end == start:
                return _Outcome.DONE
            reading = read_ahead()
            committed = await job_rows.commit_batch(
                db,
                run,
                start=start,
                end=batch.end,
                rows=batch.rows,
                errors=batch.errors,
            )
            if not committed:
                return _Outcome.OVERTAKEN
            start = batch.end
            if stopping is not None and stopping.is_set():
                return _Outcome.STOPPED
    finally:
        # A batch read ahead may still be in its thread: the reader is closed once it is done.
        reading.add_done_callback(close_when_read)


async def _import_task(job_id: int, context: Annotated[Context, TaskiqDepends()]) -> None:
    resources: Resources = context.state.resources
    with job_span(resources.settings, IMPORT_ITEMS, job_id, context.message.labels):
        # The worker's stop event (worker.py); none in the web process.
        await run_import(resources, job_id, getattr(context.state, "stopping", None))


async def queue_unfinished(resources: Resources) -> int:
    """Queue again every job the database says is queued or running: after a restart of an
    in-process queue, or of a Redis that kept nothing. A job queued twice runs once (its
    second delivery finds it finished, or its mark moved)."""
    try:
        async with open_db(resources.engine) as db:
            unfinished = await job_rows.unfinished_jobs(db)
    except (DatabaseUnavailable, SchemaBehind):
        # The service starts anyway and answers 503 (db/engine.py logged why, once); its
        # unfinished jobs are queued at a start with the database fixed.
        return 0
    for job_id in unfinished:
        await enqueue(resources.broker, IMPORT_ITEMS, job_id)
    if unfinished:
        logger.warning("queued %d unfinished jobs again", len(unfinished))
    return len(unfinished)


def register_jobs(broker: AsyncBroker) -> None:
    """The tasks ``broker`` runs. An in-process queue keeps nothing across a restart: at its
    start it queues again what the database says its previous life left queued or running."""
    broker.register_task(_import_task, task_name=IMPORT_ITEMS)
    if isinstance(broker, InMemoryBroker):

        async def resume_unfinished(state: TaskiqState) -> None:
            await queue_unfinished(state.resources)

        broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, resume_unfinished)
