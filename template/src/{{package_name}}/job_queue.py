"""The job queue: taskiq, the asyncio ecosystem's maintained queue (arq is in maintenance mode).
Its broker (Redis Streams, or in-process without Redis) is created by job_broker.py; what follows
works with either.

The queue carries only a job's id: what the job is and how far it got live in the ``jobs``
table (db/jobs.py), which the status route reads. With tracing on, it carries the trace context
too (W3C ``traceparent`` in the message's labels), so the job's span continues the request's
trace (observability/tracing.py, ``job_span``).
"""

import asyncio
from typing import Any

from opentelemetry import trace
from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker


async def stop_broker(broker: AsyncBroker, grace_seconds: float) -> None:
    """Let the jobs this process runs finish, ``grace_seconds`` at most (a job cut short is run
    again: jobs.py), then close the broker."""
    # InMemoryBroker's jobs running in this process (it has no public way to cancel them).
    running: set[asyncio.Task[Any]] = set(getattr(broker, "_running_tasks", ()))
    if running:
        _done, pending = await asyncio.wait(running, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    await broker.shutdown()


async def enqueue(broker: AsyncBroker, task_name: str, job_id: int) -> None:
    """Queue the job ``job_id`` for the task ``task_name`` (registered where jobs run)."""
    labels: dict[str, Any] = {}
    if trace.get_current_span().is_recording():  # tracing is on, in a traced request or job
        from opentelemetry.propagate import inject

        inject(labels)
    kicker: AsyncKicker[[int], None] = AsyncKicker(
        task_name=task_name, broker=broker, labels=labels
    )
    await kicker.kiq(job_id)
