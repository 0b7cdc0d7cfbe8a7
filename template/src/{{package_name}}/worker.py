"""The worker process (`worker` on the command line): it runs the jobs queued in Redis.

It enters the service's own lifespan (lifespan.py), so a job runs with the same pools, cache
and settings as a request, and listens to the queue with taskiq's receiver until SIGTERM or
SIGINT: then it takes no new job, and a running import ends after its current batch and is
queued again (another worker, or this one restarted, resumes it). A job is acknowledged once it
ran; a worker killed before that leaves it to another (job_broker.py).
"""

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from taskiq import AcknowledgeType
from taskiq.receiver import Receiver

from .job_broker import IN_WORKERS, queue_was_lost, requeue_abandoned
from .jobs import queue_unfinished
from .main import create_app
from .settings import Settings

logger = logging.getLogger(__name__)


class NoQueueToServe(Exception):
    """The service runs its jobs in the web process (no Redis): there is nothing to listen to."""


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run jobs until ``stop`` is set (SIGTERM or SIGINT when none is given); ``ready`` is set
    once it listens."""
    if not IN_WORKERS:
        raise NoQueueToServe
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
        logger.info("worker stopped: no job running")
