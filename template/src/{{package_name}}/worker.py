"""The worker process (`worker` on the command line): it runs the jobs queued in Redis.

It enters the service's own lifespan (lifespan.py), so a job runs with the same pools, cache
and settings as a request, and listens to the queue with taskiq's receiver until SIGTERM or
SIGINT: then it takes no new job, and a running import ends after its current batch and is
queued again (another worker, or this one restarted, resumes it). A job is acknowledged once it
ran; a worker killed before that leaves it to another (job_broker.py).

For its supervisor: its own ``/metrics`` (the job runs it timed, its pool) on ``metrics_port``,
served from a thread, and a heartbeat file touched every few seconds by its event loop, which a
liveness probe checks: a loop blocked by a job stops touching it.
"""

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
from prometheus_client import REGISTRY, start_http_server
from taskiq import AcknowledgeType
from taskiq.receiver import Receiver

from .job_broker import IN_WORKERS, queue_was_lost, requeue_abandoned
from .jobs import queue_unfinished
from .main import create_app
from .settings import Settings

logger = logging.getLogger(__name__)

# The heartbeat file is touched this often; a probe allows several missed beats (README.md).
HEARTBEAT_SECONDS = 5.0


class NoQueueToServe(Exception):
    """The service runs its jobs in the web process (no Redis): there is nothing to listen to."""


async def run_worker(
    settings: Settings,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    *,
    metrics_port: int | None = None,
    heartbeat_file: Path | None = None,
) -> None:
    """Run jobs until ``stop`` is set (SIGTERM or SIGINT when none is given); ``ready`` is set
    once it listens. ``metrics_port``: serve /metrics there (when metrics are enabled);
    ``heartbeat_file``: touch it every HEARTBEAT_SECONDS while running."""
    if not IN_WORKERS:
        raise NoQueueToServe
    if metrics_port is not None and settings.app.metrics_enabled:
        metrics_server, _thread = start_http_server(metrics_port, registry=REGISTRY)
    else:
        metrics_server = None
    try:
        await _listen(settings, stop, ready, heartbeat_file)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()


async def _listen(
    settings: Settings,
    stop: asyncio.Event | None,
    ready: asyncio.Event | None,
    heartbeat_file: Path | None,
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        assert state is not None
        resources = state["resources"]
        broker = resources.broker
        broker.is_worker_process = True
        await broker.startup()
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
        # The jobs end their runs between batches once it is set (jobs.py).
        broker.state.stopping = stop
        # Redis may have restarted empty since the jobs were queued: the database has them.
        if await queue_was_lost(broker, settings):
            await queue_unfinished(resources)
        requeuing = asyncio.create_task(
            requeue_abandoned(broker, settings, stop, lambda: queue_unfinished(resources))
        )
        beating = asyncio.create_task(_beat(heartbeat_file, stop)) if heartbeat_file else None
        logger.info("worker listening for jobs")
        if ready is not None:
            ready.set()
        # A failure to listen (Redis gone) ends the worker: its supervisor starts it again, and
        # the jobs it held go to live workers once its heartbeat stops (job_broker.py).
        try:
            with ThreadPoolExecutor(max_workers=1) as executor:
                receiver = Receiver(
                    broker,
                    executor=executor,
                    max_async_tasks=settings.jobs.concurrency,
                    # Acknowledged once it ran, whatever its outcome: the job's row says that.
                    ack_type=AcknowledgeType.WHEN_EXECUTED,
                )
                await receiver.listen(stop)
        finally:
            stop.set()
            await requeuing
            if beating is not None:
                await beating
        logger.info("worker stopped: no job running")


async def _beat(heartbeat_file: Path, stop: asyncio.Event) -> None:
    path = anyio.Path(heartbeat_file)
    while not stop.is_set():
        await path.touch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)
    await path.unlink(missing_ok=True)  # stopped: not alive
