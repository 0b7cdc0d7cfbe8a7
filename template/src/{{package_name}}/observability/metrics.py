"""Prometheus metrics: requests by route template, database pool use, cache hits and misses,
jobs' runs, and the jobs queued and running.

Labels stay bounded: routes are templates (``/api/v1/projects/{project_id}``, ``unmatched`` for
paths no route matched), methods outside the standard set count as ``other``.

With several worker processes (``serve --workers N``) every process writes its values to files
in ``PROMETHEUS_MULTIPROC_DIR`` and ``GET /metrics`` adds them up, whichever worker answers. The
variable must be set before this module is imported; ``serve`` does that for its workers.
Job runs are counted where they run: the web process (an in-process queue) or the job worker,
which serves its own ``/metrics`` (worker.py). The jobs queued and running are the database's
count, read at each scrape: the same answer from every instance.
"""

import os
from collections.abc import Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from ..db.engine import inline_reads_of, read_pool_of

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter("http_requests_total", "HTTP requests handled.", ("method", "route", "status"))
REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival to the end of its response body.",
    ("method", "route", "status"),
)
# livesum: with several workers, the sum over the processes that are running.
POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out_connections",
    "Database connections in use (checked out of the pool).",
    multiprocess_mode="livesum",
)
POOL_OVERFLOW = Gauge(
    "db_pool_overflow_connections",
    "Connections in use beyond pool_size (taken from max_overflow).",
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "db_pool_size_connections",
    "Connections the pool keeps open (pool_size).",
    multiprocess_mode="livesum",
)
READ_POOL_CHECKED_OUT = Gauge(
    "db_read_pool_checked_out_connections",
    "PostgreSQL read pool connections in use (db/read_pool.py).",
    multiprocess_mode="livesum",
)
READ_POOL_SIZE = Gauge(
    "db_read_pool_size_connections",
    "Connections the PostgreSQL read pool may open (read_pool_size).",
    multiprocess_mode="livesum",
)
# A rising rate is a slow-read signal below the slow-statement log: reads that outgrew their
# budget on the event loop's thread, or met a writer's lock.
INLINE_READS_HANDED_OFF = Counter(
    "db_inline_reads_handed_off_total",
    "SQLite reads handed from the event loop's thread to aiosqlite (db/inline_reads.py): over"
    " their budget, locked out or failed.",
)
CACHE_LOOKUPS = Counter("cache_lookups_total", "Cache lookups by result.", ("result",))
_CACHE_HIT = CACHE_LOOKUPS.labels("hit")
_CACHE_MISS = CACHE_LOOKUPS.labels("miss")

JOB_RUN_SECONDS = Histogram(
    "job_run_duration_seconds",
    "A job's run, by task and how it ended: succeeded, failed (for good), retried (a transient"
    " error: queued again), stopped (the worker stopping: queued again) or skipped (nothing to"
    " run).",
    ("task", "outcome"),
    buckets=(0.01, 0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600),
)


def record_cache_lookup(hit: bool) -> None:
    (_CACHE_HIT if hit else _CACHE_MISS).inc()


# The two series of each label set seen, so that a request looks them up once (``labels()``
# checks and joins its arguments on every call). Bounded like the labels themselves.
_REQUEST_SERIES: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """The access log middleware's observer: count and time one finished request."""
    labels = (method if method in _METHODS else "other", route, str(status))
    series = _REQUEST_SERIES.get(labels)
    if series is None:
        series = (REQUESTS.labels(*labels), REQUEST_SECONDS.labels(*labels))
        _REQUEST_SERIES[labels] = series
    count, duration = series
    count.inc()
    duration.observe(seconds)


def observe_pool(engine: AsyncEngine, pool_size: int) -> None:
    """Keep the pool gauges current from checkout/checkin events (a counter update each).

    Events rather than reading the pool at scrape time, so that every worker's pool is counted,
    not only the pool of the worker that answers the scrape.
    """
    checked_out = 0
    POOL_SIZE.set(pool_size)

    def update(delta: int) -> None:
        nonlocal checked_out
        checked_out += delta
        POOL_CHECKED_OUT.set(checked_out)
        POOL_OVERFLOW.set(max(0, checked_out - pool_size))

    pool = engine.sync_engine.pool
    event.listen(pool, "checkout", lambda *_: update(1))
    event.listen(pool, "checkin", lambda *_: update(-1))
    read_pool = read_pool_of(engine)
    if read_pool is not None:
        READ_POOL_SIZE.set(read_pool.size)
        read_pool.observers.append(READ_POOL_CHECKED_OUT.inc)
    inline_reads = inline_reads_of(engine)
    if inline_reads is not None:
        inline_reads.observers.append(INLINE_READS_HANDED_OFF.inc)


def observe_job_run(task: str, outcome: str, seconds: float) -> None:
    JOB_RUN_SECONDS.labels(task, outcome).observe(seconds)


class _UnfinishedJobs(Collector):
    """``jobs_unfinished{status="queued"|"running"}``, counted by the database at the scrape."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "jobs_unfinished", "Jobs queued or running (the database's count).", labels=["status"]
        )
        for status, count in self.counts.items():
            gauge.add_metric([status], count)
        yield gauge


def process_stopped() -> None:
    """Drop this worker's live gauges from the shared directory (its counters stay counted)."""
    if os.environ.get(MULTIPROC_DIR_VARIABLE):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def exposition(unfinished_jobs: dict[str, int] | None) -> bytes:
    """The text /metrics answers: this process's metrics, or with several worker processes every
    one's (blocking I/O: the files in PROMETHEUS_MULTIPROC_DIR), and the jobs queued and running
    when the database counted them."""
    registry = REGISTRY
    if os.environ.get(MULTIPROC_DIR_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    text = generate_latest(registry)
    if unfinished_jobs is not None:
        jobs_registry = CollectorRegistry(auto_describe=False)
        jobs_registry.register(_UnfinishedJobs(unfinished_jobs))
        text += generate_latest(jobs_registry)
    return text
