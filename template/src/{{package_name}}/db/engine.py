"""The one place that builds the database engine: URL, pool parameters and query logging."""

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from weakref import WeakKeyDictionary

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, PoolResetState
from sqlalchemy.util import await_only, greenlet_spawn

from ..observability.timing import current_timings
from ..settings import UPGRADE_ADVICE, DatabaseSettings
from .inline_reads import InlineReads
from .read_pool import ReadPool

logger = logging.getLogger(__name__)

# SQLSTATEs of a server that cannot take the statement now: connection failures (class 08),
# shutting down or restarting (57P01-57P03), too many connections (53300), a database or role
# that does not exist or may not log in (3D000, 28000, 28P01): a misconfiguration is an outage too.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "3D000", "28000", "28P01")
# A table or column the code uses is missing: migrations have not run (undefined table, column).
_SCHEMA_BEHIND_SQLSTATES = ("42P01", "42703")
_SCHEMA_BEHIND_SQLITE_MESSAGES = ("no such table", "no such column")


class DatabaseUnavailable(Exception):
    """The database cannot be reached (down, restarting, network cut): main.py answers 503."""


class SchemaBehind(Exception):
    """The database answers but lacks tables or columns the code uses: its migrations have not
    all run (main.py answers 503 naming the command). Not an outage: nothing to wait for."""


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


def _connect_args(url: URL, settings: DatabaseSettings) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ValueError(
                "use a SQLite file (sqlite:///path.db): an in-memory DB is per connection"
            )
        return {"timeout": settings.pool_timeout_seconds}
    driver = _asyncpg_connect_args(settings)
    if settings.pooler == "pgbouncer":
        # SQLAlchemy's adapter's own: no statement cache of its own, asyncpg's unnamed statement.
        return {
            **driver,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _unnamed_statement,
        }
    return driver


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    url = async_url(settings.url)
    sqlite = url.get_backend_name() == "sqlite"
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=settings.pool_recycle_seconds,
        # SQLite: _roll_back_only_a_transaction does the pool's reset instead.
        pool_reset_on_return=None if sqlite else "rollback",
        echo=settings.echo,
        connect_args=_connect_args(url, settings),
    )
    if sqlite:
        _roll_back_only_a_transaction(engine)
    if settings.pool_pre_ping:
        _ping_idle_connections(engine, idle_seconds=settings.pool_pre_ping_idle_seconds)
    timed = _statement_timer(settings.slow_query_ms / 1000)
    _instrument(engine, timed)
    availability = _watch_availability(engine)
    if settings.read_pool_size and not settings.echo:
        if sqlite:
            _add_inline_reads(engine, timed)
        else:
            _add_read_pool(engine, settings, availability, timed)
    return engine


def create_probe_engine(settings: DatabaseSettings) -> AsyncEngine:
    """The readiness check's engine: a connection of its own for each check (no pool), so a
    pool whose every connection is busy with requests cannot starve the check into "down"."""
    url = async_url(settings.url)
    engine = create_async_engine(url, poolclass=NullPool, connect_args=_connect_args(url, settings))

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, _cparams: Any) -> None:
        _check_sqlite_directory(dialect, cargs)  # then the dialect connects as usual

    return engine


def _check_sqlite_directory(dialect: Any, cargs: Any) -> None:
    """A SQLite file whose directory does not exist (no var/ in a fresh checkout, a typo in
    DATABASE_URL): sqlite3 says only "unable to open database file"; this names the directory,
    and spares aiosqlite a failed connect (its worker thread outlives it)."""
    if dialect.name != "sqlite" or str(cargs[0]).startswith("file:"):
        return
    directory = Path(cargs[0]).parent
    if not directory.is_dir():
        raise FileNotFoundError(f"no directory {directory} for the SQLite file")


def _roll_back_only_a_transaction(engine: AsyncEngine) -> None:
    """SQLite: a connection going back to the pool is rolled back only when a transaction is
    open on it. sqlite3 begins none for a SELECT, so after a read there is nothing to undo, but
    the pool's own reset would still send a rollback to aiosqlite's thread: a thread hop, as
    costly as the read's own (``read_on_driver``). What a ``Connection`` or session began is
    ended by them before the pool sees the connection; this is for what was left open."""

    @event.listens_for(engine.sync_engine, "reset")
    def _reset(
        dbapi_connection: Any, record: ConnectionPoolEntry | None, state: PoolResetState
    ) -> None:
        if not state.asyncio_safe or state.transaction_was_reset:
            return  # a connection being discarded, or a transaction its Connection ended
        aiosqlite_connection = record.driver_connection if record is not None else None
        if aiosqlite_connection is None or aiosqlite_connection.in_transaction:
            dbapi_connection.rollback()


def _ping_idle_connections(engine: AsyncEngine, *, idle_seconds: float) -> None:
    """SQLAlchemy's pool_pre_ping, but only for connections idle for ``idle_seconds`` or more.

    Under load a connection goes back to the pool and out again within milliseconds, and the ping
    (BEGIN, an empty statement, ROLLBACK on asyncpg) took ~18% of an uncached page's time in a
    py-spy profile. A connection lost in that window fails its request like one lost
    mid-request: a 503, and the pool is invalidated. A failed ping replaces every pooled
    connection older than now (as pool_pre_ping does: a restart closed them all); a new
    connection is never pinged, as its info, which holds the check-in time, starts empty."""
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _returned(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < idle_seconds:
            return
        try:
            sync_engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise InvalidatePoolError(f"pre-ping failed: {type(exc).__name__}") from exc


def _asyncpg_connect_args(settings: DatabaseSettings) -> dict[str, Any]:
    """What ``asyncpg.connect`` takes: SQLAlchemy's connections add their adapter's part
    (``_connect_args``), the read pool connects with this alone.

    PgBouncer in transaction mode gives each transaction whichever server connection is free,
    and PgBouncer 1.18 forwards no prepared statement: one prepared (and cached) on one server
    connection is unknown on the next, or a name is already taken there by another client.
    So asyncpg caches none, SQLAlchemy caches none, and each statement is asyncpg's unnamed one,
    parsed again with every execution in the same round trip, so none outlives its use.
    PgBouncer 1.18 also refuses a statement_timeout startup parameter: set it on the role
    (README.md, "Scaling out")."""
    if settings.pooler == "pgbouncer":
        return {"statement_cache_size": 0}
    return {"server_settings": {"statement_timeout": str(settings.statement_timeout_ms)}}


def _unnamed_statement() -> str:
    return ""


# expire_on_commit=False: objects stay readable after commit without a surprise reload query.
SESSION_OPTIONS: dict[str, Any] = {"expire_on_commit": False, "autoflush": False}


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, **SESSION_OPTIONS)


async def read_on_driver(engine: AsyncEngine, sql: str, args: Sequence[Any]) -> Sequence[Any]:
    """Run one read statement (``sql`` in the driver's own paramstyle) on the driver itself
    (asyncpg, sqlite3), in autocommit.

    When nothing but the service listens to statements: PostgreSQL reads on the engine's read
    pool (read_pool.py); SQLite reads on the event loop's thread (inline_reads.py), unless the
    read runs over its budget or fails there. Otherwise on a connection of SQLAlchemy's pool,
    checked out and in by SQLAlchemy's own ``Connection`` (``fetch_on_driver``), so the pool's
    events (the pool metrics, the ping after idle) and its error handling (an outage is
    DatabaseUnavailable) hold as on every connection; but without the ``AsyncConnection``
    around it and without an isolation level to set and reset: nothing ever begins a
    transaction on it. Checkout, statement and checkin run in one greenlet. On SQLite the read
    is one hop to aiosqlite's thread, where SQLAlchemy's execution made five (cursor, execute,
    fetch, close, and the pool's rollback). Nothing in the checkin awaits, so it completes even
    when the request is cancelled."""
    sync_engine = engine.sync_engine
    if not _others_listen(sync_engine.dispatch):
        pool = _READ_POOLS.get(sync_engine)
        if pool is not None:
            return await pool.fetch(sql, args)
        inline = _INLINE_READS.get(sync_engine)
        if inline is not None:
            rows = inline.fetch(sql, args)
            if rows is not None:
                return rows
    return await greenlet_spawn(_read_in_greenlet, sync_engine, sql, args)


def _others_listen(dispatch: Any) -> bool:
    """Whether anything but ``_instrument`` listens to statements (OpenTelemetry's SQLAlchemy
    instrumentation, a listener of yours): then it must see them, run by SQLAlchemy."""
    return len(dispatch.before_cursor_execute) > 1 or len(dispatch.after_cursor_execute) > 1


def _read_in_greenlet(sync_engine: Engine, sql: str, args: Sequence[Any]) -> Sequence[Any]:
    with sync_engine.connect() as sync_conn:
        return _fetch_in_greenlet(sync_conn, sql, args)


async def fetch_on_driver(sync_conn: Connection, sql: str, args: Sequence[Any]) -> Sequence[Any]:
    """Run one read statement (``sql`` in the driver's own paramstyle) on the driver itself, on
    ``sync_conn`` (an ``AsyncConnection``'s ``sync_connection``).

    SQLAlchemy's execution around a statement (execution context, cursor, result rows) was ~35%
    of an uncached page's time in a py-spy profile: this skips it, and keeps what the service
    promises of every statement. The statement events still fire, so it is timed into
    Server-Timing and logged when slow (this module's listeners), and a failure goes through
    SQLAlchemy's own error handling: a lost connection is invalidated and an outage is a 503.
    When anything else listens to statements (OpenTelemetry's SQLAlchemy instrumentation, a
    listener of yours) the statement runs through SQLAlchemy instead, so that it sees every
    statement (in autocommit, as on the driver). Rows are the driver's: values as it decodes
    them (``JsonRows`` applies SQLAlchemy's result processing where a type has one)."""
    return await greenlet_spawn(_fetch_in_greenlet, sync_conn, sql, args)


def _fetch_in_greenlet(sync_conn: Connection, sql: str, args: Sequence[Any]) -> Sequence[Any]:
    dispatch = sync_conn.dispatch
    if _others_listen(dispatch):
        return _execute_in_autocommit(sync_conn, sql, args)
    pooled = sync_conn.connection
    driver_connection = pooled.driver_connection
    assert driver_connection is not None, "a checked-out connection has its driver connection"
    dispatch.before_cursor_execute(sync_conn, None, sql, args, None, False)
    try:
        if sync_conn.dialect.name == "sqlite":
            # Statement and fetch in one call on aiosqlite's thread.
            fetched = driver_connection.execute_fetchall(sql, args)
        else:
            fetched = driver_connection.fetch(sql, *args)
        rows: Sequence[Any] = await_only(fetched)
    except Exception as error:
        _raise_as_sqlalchemy_does(sync_conn, pooled, error, sql, args)
    dispatch.after_cursor_execute(sync_conn, None, sql, args, None, False)
    return rows


def _execute_in_autocommit(sync_conn: Connection, sql: str, args: Sequence[Any]) -> Sequence[Any]:
    conn = sync_conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn.exec_driver_sql(sql, tuple(args)).all()


def _raise_as_sqlalchemy_does(
    sync_conn: Connection, pooled: Any, error: Exception, sql: str, args: Sequence[Any]
) -> NoReturn:
    """The driver's error, raised as SQLAlchemy raises it from its own execution: translated
    to the DBAPI error, then its handle_error events (``_watch_availability``) and the
    invalidation of a lost connection. Both are SQLAlchemy internals: the outage tests run
    through this path, so an upgrade that changes them fails there."""
    try:
        pooled.dbapi_connection._handle_exception(error)
    except Exception as dbapi_error:
        sync_conn._handle_dbapi_exception(dbapi_error, sql, tuple(args), None, None)
    raise error


def _statement_timer(slow_query_seconds: float) -> Callable[[float, str], None]:
    """What every statement's time goes to: the request's Server-Timing, and the log when slow."""

    def timed(elapsed: float, statement: str) -> None:
        timings = current_timings.get()
        if timings is not None:
            timings.add_statement(elapsed)
        if elapsed >= slow_query_seconds:
            logger.warning("slow query (%.1f ms): %s", elapsed * 1000, statement)

    return timed


def _instrument(engine: AsyncEngine, timed: Callable[[float, str], None]) -> None:
    """Time every statement run through SQLAlchemy (``_statement_timer``)."""
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
        timed(time.perf_counter() - conn.info["query_start"].pop(), statement)


class _Availability:
    """Turns "the database cannot be reached" into DatabaseUnavailable, with one warning when an
    outage starts and one line when a connection works again, never a traceback per request;
    and a schema without the tables the code uses into SchemaBehind, logged once."""

    def __init__(self) -> None:
        self._outage_since: float | None = None
        self._failures = 0
        self._schema_behind_logged = False

    def unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        if self._outage_since is None:
            self._outage_since, self._failures = time.monotonic(), 0
            logger.warning(
                "database unavailable (%s: %s); answering 503 until it is back",
                type(exc).__name__,
                exc,
            )
        self._failures += 1
        return DatabaseUnavailable(f"database unavailable: {type(exc).__name__}")

    def schema_behind(self, exc: BaseException) -> SchemaBehind:
        if not self._schema_behind_logged:  # once per process: every answer says what to run
            self._schema_behind_logged = True
            logger.warning(
                "database schema is behind the service's migrations; answering 503: %s",
                UPGRADE_ADVICE,
            )
        return SchemaBehind(f"database schema is behind: {type(exc).__name__}")

    def connected(self) -> None:
        if self._outage_since is not None:
            logger.warning(
                "database available again after %.1f s (%d requests failed)",
                time.monotonic() - self._outage_since,
                self._failures,
            )
            self._outage_since = None

    def translate(self, exc: Exception, lost: bool) -> Exception | None:
        """What the driver's ``exc`` means to the service: DatabaseUnavailable, SchemaBehind,
        or None for an error of the statement itself. ``lost``: the connection was closed under
        it. For SQLAlchemy's connections (``_watch_availability``) and the read pool alike."""
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if (
            lost
            or isinstance(exc, OSError)  # refused, unreachable, timed out
            or sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
            # SQLite: the file cannot be opened (no permission, say; a missing directory is
            # _check_sqlite_directory's).
            or getattr(exc, "sqlite_errorname", None) == "SQLITE_CANTOPEN"
        ):
            return self.unavailable(exc)
        if sqlstate in _SCHEMA_BEHIND_SQLSTATES or (
            not sqlstate and str(exc).startswith(_SCHEMA_BEHIND_SQLITE_MESSAGES)
        ):
            return self.schema_behind(exc)
        return None


def _watch_availability(engine: AsyncEngine) -> _Availability:
    """Raise ``_Availability``'s exceptions from SQLAlchemy's connections. The pool needs no
    help to recover: it reconnects on the next checkout."""
    sync_engine = engine.sync_engine
    availability = _Availability()

    @event.listens_for(sync_engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            _check_sqlite_directory(dialect, cargs)
            return dialect.connect(*cargs, **cparams)
        except OSError as exc:  # refused, unreachable, timed out: not a DBAPI error
            raise availability.unavailable(exc) from exc

    @event.listens_for(sync_engine, "handle_error")
    def _failed(context: ExceptionContext) -> None:
        original = context.original_exception
        if not isinstance(original, Exception):
            # Cancelled (a timeout, a client that left, a shutdown): SQLAlchemy calls it a
            # disconnect and drops the connection, rightly, but the database is fine, and the
            # caller must get its cancellation back.
            return
        translated = availability.translate(original, context.is_disconnect)
        if translated is not None:
            raise translated from original

    @event.listens_for(sync_engine, "checkout")
    def _checked_out(*_: Any) -> None:
        availability.connected()

    return availability


# The read pool of each engine that has one (``_add_read_pool``), and SQLite's inline reads
# (``_add_inline_reads``).
_READ_POOLS: WeakKeyDictionary[Engine, ReadPool] = WeakKeyDictionary()
_INLINE_READS: WeakKeyDictionary[Engine, InlineReads] = WeakKeyDictionary()
# How long a SQLite read may hold up the event loop before it goes to aiosqlite's thread: ~20
# uncached pages of 50.
INLINE_READ_BUDGET_SECONDS = 0.002


def read_pool_of(engine: AsyncEngine) -> ReadPool | None:
    return _READ_POOLS.get(engine.sync_engine)


def _add_read_pool(
    engine: AsyncEngine,
    settings: DatabaseSettings,
    availability: _Availability,
    timed: Callable[[float, str], None],
) -> None:
    """PostgreSQL's one-statement reads (``read_on_driver``) on asyncpg connections of their
    own (read_pool.py), up to ``read_pool_size`` beside SQLAlchemy's pool, closed with it."""
    sync_engine = engine.sync_engine
    cargs, cparams = sync_engine.dialect.create_connect_args(sync_engine.url)
    cparams.update(_asyncpg_connect_args(settings))

    import asyncpg  # installed with PostgreSQL only

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(*cargs, **cparams)

    pool = ReadPool(
        connect,
        size=settings.read_pool_size,
        timeout_seconds=settings.pool_timeout_seconds,
        recycle_seconds=settings.pool_recycle_seconds,
        ping_idle_seconds=settings.pool_pre_ping_idle_seconds if settings.pool_pre_ping else None,
        translate=availability.translate,
        timed=timed,
        connected=availability.connected,
    )
    _READ_POOLS[sync_engine] = pool

    @event.listens_for(sync_engine, "engine_disposed")
    def _disposed(_engine: Engine) -> None:
        pool.close()


def inline_reads_of(engine: AsyncEngine) -> InlineReads | None:
    return _INLINE_READS.get(engine.sync_engine)


def _add_inline_reads(engine: AsyncEngine, timed: Callable[[float, str], None]) -> None:
    """SQLite's one-statement reads (``read_on_driver``) on the event loop's thread, on a
    connection of their own (inline_reads.py), closed with the engine."""
    sync_engine = engine.sync_engine
    cargs, cparams = sync_engine.dialect.create_connect_args(sync_engine.url)
    inline = InlineReads(
        str(cargs[0]),
        uri=bool(cparams.get("uri", False)),
        budget_seconds=INLINE_READ_BUDGET_SECONDS,
        timed=timed,
    )
    _INLINE_READS[sync_engine] = inline

    @event.listens_for(sync_engine, "engine_disposed")
    def _disposed(_engine: Engine) -> None:
        inline.close()
