"""The one place that builds the database engine: URL, pool parameters and query logging."""

import logging
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ..settings import DatabaseSettings
from ..timing import current_timings

logger = logging.getLogger(__name__)

_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


def async_url(url: str) -> URL:
    """Take the plain URL users have (``postgresql://``, ``sqlite:///``); add the async driver."""
    parsed = make_url(url)
    if "+" in parsed.drivername:
        return parsed
    try:
        return parsed.set(drivername=_ASYNC_DRIVERS[parsed.drivername])
    except KeyError:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: use postgresql:// or sqlite:///"
        ) from None


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    url = async_url(settings.url)
    options: dict[str, Any] = {"echo": settings.echo, "pool_pre_ping": settings.pool_pre_ping}
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ValueError(
                "use a SQLite file (sqlite:///path.db): an in-memory DB is per connection"
            )
        options["connect_args"] = {"timeout": settings.pool_timeout_seconds}
    elif settings.pooler == "pgbouncer":
        options["connect_args"] = _pgbouncer_connect_args()
    else:
        options["connect_args"] = {
            "server_settings": {"statement_timeout": str(settings.statement_timeout_ms)}
        }
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.pool_recycle_seconds,
        **options,
    )
    _instrument(engine, slow_query_seconds=settings.slow_query_ms / 1000)
    return engine


def _pgbouncer_connect_args() -> dict[str, Any]:
    """PgBouncer in transaction mode gives each transaction whichever server connection is free,
    and PgBouncer 1.18 forwards no prepared statement: one prepared (and cached) on one server
    connection is unknown on the next, or a name is already taken there by another client.
    So asyncpg caches none, SQLAlchemy caches none, and each statement is asyncpg's unnamed one,
    parsed again with every execution in the same round trip, so none outlives its use.
    PgBouncer 1.18 also refuses a statement_timeout startup parameter: set it on the role
    (README.md, "Scaling out")."""
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unnamed_statement,
    }


def _unnamed_statement() -> str:
    return ""


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit without a surprise reload query.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def _instrument(engine: AsyncEngine, *, slow_query_seconds: float) -> None:
    """Time every statement: add it to the request's Server-Timing and log the slow ones."""
    sync_engine = engine.sync_engine

    if sync_engine.dialect.name == "sqlite":

        @event.listens_for(sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside a writer; foreign keys are off in SQLite by default.
            for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _start(conn: Connection, *_: Any) -> None:
        conn.info.setdefault("query_start", []).append(time.perf_counter())

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _stop(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        elapsed = time.perf_counter() - conn.info["query_start"].pop()
        timings = current_timings.get()
        if timings is not None:
            timings.add_statement(elapsed)
        if elapsed >= slow_query_seconds:
            logger.warning("slow query (%.1f ms): %s", elapsed * 1000, statement)
