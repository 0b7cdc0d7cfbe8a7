"""Logging: JSON lines in production, readable lines in development, the request id (and in a
background job, the job id) on every line.

``configure_logging`` is the one place that sets logging up; ``create_app`` and the CLI call it.
It replaces only the handler it installed itself, so calling it again (one app per test) is
harmless and leaves other handlers (pytest's log capture) alone.
"""

import asyncio
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic_core import to_json

from ..settings import AppSettings

# Set by the access log middleware for the duration of a request; tasks started inside the
# request copy the context, so their lines carry the id too.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
# Set while a job runs (``job_logging``), in a worker or in the web process.
current_job_id: ContextVar[int | None] = ContextVar("current_job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(request_id)s]%(job)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
# Except uvicorn's ``color_message``: the message again, with ANSI colour codes for a terminal.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "request_id", "job_id", "job", "taskName", "color_message"}
)


@contextmanager
def job_logging(job_id: int) -> Iterator[None]:
    """Every line logged inside (by any logger, the database's too) names the job ``job_id``."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` (``-`` outside a request) and ``record.job_id`` (None
    outside a job) for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get() or "-"
        job_id = current_job_id.get()
        record.job_id = job_id
        record.job = "" if job_id is None else f" job={job_id}"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and ``extra`` fields.

    Every request writes one (the access log), so it is written by pydantic-core (5x faster than
    ``json.dumps`` here) and the time's date and second are formatted once per second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # handlers format under their lock: no race here
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            getattr(record, "request_id", "-"),
            getattr(record, "job_id", None),
            fields,
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        request_id: str,
        job_id: int | None,
        fields: dict[str, Any],
    ) -> str:
        entry: dict[str, Any] = {
            "time": self._time(created),
            "level": level,
            "logger": logger,
            "message": message,
        }
        if request_id != "-":
            entry["request_id"] = request_id
        if job_id is not None:
            entry["job_id"] = job_id
        entry.update(fields)
        return to_json(entry, fallback=str).decode()


class _ShutdownCancellationFilter(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" for a request task that uvicorn cancelled
    itself, its graceful shutdown out of time: a traceback of the CancelledError, pointing at
    whatever line the request was on. The access log says what was cut (request_log.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


class _ServiceHandler(logging.StreamHandler[TextIO]):
    """The handler ``configure_logging`` owns (found again by its type). It writes to
    ``sys.stderr`` as it is at each record, so a stream swapped out since (pytest's capture)
    is never written to after it closed."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _stream: TextIO) -> None:
        pass

    def write_json(self, level: str, logger: str, message: str, fields: dict[str, Any]) -> None:
        """Write the line this handler would write for such a record, without the record
        (``sole_json_handler`` says when that is the same thing)."""
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter)
        request_id = current_request_id.get() or "-"
        with self.lock:  # type: ignore[union-attr]  # created with the handler
            line = formatter.line(
                time.time(), level, logger, message, request_id, current_job_id.get(), fields
            )
            stream = self.stream
            stream.write(line + self.terminator)
            stream.flush()


def sole_json_handler(logger: logging.Logger, level: int) -> _ServiceHandler | None:
    """The service's handler (``configure_logging``, JSON lines) when it is the only thing a
    record of ``logger`` at ``level`` would reach: no other handler or filter on the way, every
    logger enabled and propagating. The access log then writes its line through
    ``_ServiceHandler.write_json``, the same bytes without logging's dispatch (the record, the
    filters, the walk up the loggers, two lock rounds): a cached answer took 43 us of CPU in
    process with it, 31 us without. Any handler or filter of yours, pytest's log capture,
    OpenTelemetry's log bridge: the line goes through logging as every other line."""
    if not logger.isEnabledFor(level):
        return None
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        if current.handlers or current.filters or current.disabled or not current.propagate:
            return None
        current = current.parent
    root = logging.root
    if len(root.handlers) != 1 or root.filters or root.disabled:
        return None
    handler = root.handlers[0]
    if (
        type(handler) is not _ServiceHandler
        or level < handler.level
        or len(handler.filters) != 1
        or type(handler.filters[0]) is not RequestIdFilter
        or type(handler.formatter) is not JsonFormatter
    ):
        return None
    return handler


def log_format(settings: AppSettings) -> str:
    if settings.log_format != "auto":
        return settings.log_format
    return "json" if settings.environment == "production" else "text"


def configure_logging(settings: AppSettings) -> None:
    """Also turns off what the formatters never print and every record would pay for (Python's
    logging docs, "Optimization"): the caller's file and line (a walk up the stack), and the
    thread, process and multiprocessing names. Set them back after this if a handler of yours
    prints them."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _ServiceHandler()
    handler.addFilter(RequestIdFilter())
    if log_format(settings) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # uvicorn's loggers go through the root handler; its access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    server_log = logging.getLogger("uvicorn.error")
    for old_filter in [f for f in server_log.filters if isinstance(f, _ShutdownCancellationFilter)]:
        server_log.removeFilter(old_filter)
    server_log.addFilter(_ShutdownCancellationFilter())
    logging.getLogger("uvicorn.access").disabled = True
