"""Per-request timing: one mutable record per request, reachable from anywhere via a contextvar.

The timing middleware opens a record; the database layer adds every statement's duration to it.
Tasks started inside a request (``asyncio.gather``, background tasks) copy the context, so they
add to the same record.
"""

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class RequestTimings:
    db_seconds: float = 0.0
    db_statements: int = 0

    def add_statement(self, seconds: float) -> None:
        self.db_seconds += seconds
        self.db_statements += 1


current_timings: ContextVar[RequestTimings | None] = ContextVar("current_timings", default=None)
