"""PostgreSQL's one-statement reads on asyncpg connections of their own, outside SQLAlchemy's pool.

An uncached page is one read (``JsonRows``: the database writes the JSON). Measured in
process, ten reads at a time of one small row, CPU a read: 173-222 us through SQLAlchemy's pool
(a greenlet, a ``Connection``, checkout and checkin with their events), 100-120 us through
``asyncpg.Pool`` (a task per release for its ``asyncio.shield``, a proxy object per checkout,
its queue), 41-46 us on a connection taken from a list, which is what this pool does. What
the service promises of every connection holds here too, through the callbacks
``engine.create_engine`` gives it: an outage is ``DatabaseUnavailable`` (503) with one
warning, a full pool waits ``timeout_seconds`` then raises SQLAlchemy's pool ``TimeoutError``
(503), each statement is timed into Server-Timing and logged when slow, and the pool gauges
count its connections.

Connections are reused last in, first out (the warm ones), pinged (one round trip) only when
they were idle for ``ping_idle_seconds``, and closed once older than ``recycle_seconds``. A read
that fails for any other reason than an error the server answered (a lost connection, a
cancellation) closes its connection: what state it is in is unknown, and a new one is cheap
next to an answer read from a half-finished exchange. A lost connection also closes every idle
one: they were opened before the server went away (as SQLAlchemy invalidates its pool).
"""

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy.exc import TimeoutError as PoolTimeoutError

if TYPE_CHECKING:  # installed with PostgreSQL only; the engine imports it when it connects
    import asyncpg

# What the engine gives the pool: how to connect, what a failure means, what a statement took.
Connect = Callable[[], Awaitable["asyncpg.Connection"]]
# The exception to raise instead of ``error`` (DatabaseUnavailable, SchemaBehind), or None;
# ``lost``: the connection was closed under the statement.
Translate = Callable[[Exception, bool], Exception | None]
Timed = Callable[[float, str], None]
# Connection failure (08), the server shutting down or restarting (57P01-57P03): the server is
# going away, and every idle connection with it.
_SERVER_GOING_AWAY = ("08", "57P0")


@dataclass(slots=True)
class _Pooled:
    connection: "asyncpg.Connection"
    opened_at: float
    returned_at: float
    generation: int


class ReadPool:
    def __init__(
        self,
        connect: Connect,
        *,
        size: int,
        timeout_seconds: float,
        recycle_seconds: float,
        ping_idle_seconds: float | None,
        translate: Translate,
        timed: Timed,
        connected: Callable[[], None],
    ) -> None:
        self.size = size
        self._connect = connect
        self._timeout = timeout_seconds
        self._recycle = recycle_seconds
        self._ping_idle = ping_idle_seconds
        self._translate = translate
        self._timed = timed
        self._connected = connected
        self._idle: list[_Pooled] = []
        self._opened = 0  # idle, in use, or connecting
        # Callers waiting for a connection: each gets one handed over (_Pooled), or None when
        # a place to open one came free.
        self._waiters: deque[asyncio.Future[_Pooled | None]] = deque()
        self._generation = 0  # close() bumps it: connections of an older one are not reused
        self.in_use = 0
        self.observers: list[Callable[[int], None]] = []  # called with +1 or -1

    @property
    def idle(self) -> int:
        """Connections open and waiting for a read."""
        return len(self._idle)

    async def fetch(self, sql: str, args: Sequence[Any]) -> "list[asyncpg.Record]":
        """The rows of one statement (``$1``-style parameters), in autocommit."""
        pooled = await self._checkout()
        self._counted(1)
        started = time.perf_counter()
        try:
            rows: list[asyncpg.Record] = await pooled.connection.fetch(sql, *args)
        except BaseException as error:
            self._counted(-1)
            sqlstate: str | None = getattr(error, "sqlstate", None)
            if sqlstate is not None and not sqlstate.startswith(_SERVER_GOING_AWAY):
                self._checkin(pooled)  # the server answered: the connection is fine
            else:
                # Lost (every idle one is as old), or cancelled mid-exchange (this one only).
                self._drop(pooled, every_idle=isinstance(error, Exception))
            if isinstance(error, Exception):
                self._raise_translated(error, lost=pooled.connection.is_closed())
            raise
        self._timed(time.perf_counter() - started, sql)
        self._counted(-1)
        self._checkin(pooled)
        return rows

    def close(self) -> None:
        """Close the idle connections now and those in use when they come back. The pool
        stays usable: it opens new ones when asked (as SQLAlchemy's pool after ``dispose``).
        Closed without a goodbye to the server (which logs nothing for an idle session's end):
        a graceful close awaits each one, and ``engine.dispose()`` is synchronous inside."""
        self._generation += 1
        idle, self._idle = self._idle, []
        self._opened -= len(idle)
        for pooled in idle:
            pooled.connection.terminate()
            self._place_freed()

    async def _checkout(self) -> _Pooled:
        deadline = time.monotonic() + self._timeout
        while True:
            if not self._idle and self._opened < self.size:
                return await self._open()  # new: never pinged
            pooled = self._idle.pop() if self._idle else await self._wait(deadline)
            if pooled is not None and await self._usable(pooled):
                return pooled

    async def _open(self) -> _Pooled:
        self._opened += 1
        try:
            connection = await self._connect()
        except BaseException as error:
            self._opened -= 1
            self._place_freed()
            if isinstance(error, Exception):
                self._raise_translated(error, lost=False)
            raise
        self._connected()
        now = time.monotonic()
        return _Pooled(connection, now, now, self._generation)

    async def _wait(self, deadline: float) -> _Pooled | None:
        """A connection handed over by a read that ended, or None when a place to open one
        came free; SQLAlchemy's pool ``TimeoutError`` at ``deadline``."""
        waiter: asyncio.Future[_Pooled | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await waiter
        except BaseException as error:
            if not waiter.done():
                waiter.cancel()  # skipped by _checkin and _place_freed
            elif not waiter.cancelled():
                # Handed over just as this caller gave up: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._place_freed()
                else:
                    self._release(handed)
            if isinstance(error, TimeoutError):
                raise PoolTimeoutError(
                    f"read pool limit of {self.size} reached, no connection came free in "
                    f"{self._timeout:.1f} s"
                ) from None
            raise

    async def _usable(self, pooled: _Pooled) -> bool:
        """Whether ``pooled`` may serve a read: open, of this generation, not too old, and
        alive when it was idle long enough to have been cut. False: it was closed."""
        now = time.monotonic()
        if (
            pooled.connection.is_closed()  # the server or the network closed it while idle
            or pooled.generation != self._generation
            or (self._recycle >= 0 and now - pooled.opened_at > self._recycle)
        ):
            self._drop(pooled, every_idle=False)
            return False
        if self._ping_idle is None or now - pooled.returned_at < self._ping_idle:
            return True
        try:
            await pooled.connection.fetchrow(";")  # an empty statement: one round trip
        except Exception:
            self._drop(pooled, every_idle=True)
            return False
        except BaseException:
            self._drop(pooled, every_idle=False)  # cancelled mid-ping
            raise
        return True

    def _checkin(self, pooled: _Pooled) -> None:
        if pooled.generation != self._generation:
            self._drop(pooled, every_idle=False)  # the pool was closed while it was in use
            return
        pooled.returned_at = time.monotonic()
        self._release(pooled)

    def _release(self, pooled: _Pooled) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(pooled)
                return
        self._idle.append(pooled)

    def _drop(self, pooled: _Pooled, *, every_idle: bool) -> None:
        """Close ``pooled`` (lost, in doubt, too old, or of a closed pool); with
        ``every_idle``, the idle connections too: when the server went away, they are as dead,
        and each would cost a request."""
        dropped = [pooled]
        if every_idle:
            dropped += self._idle
            self._idle = []
        for each in dropped:
            each.connection.terminate()
            self._opened -= 1
            self._place_freed()

    def _place_freed(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _raise_translated(self, error: Exception, *, lost: bool) -> NoReturn:
        replacement = self._translate(error, lost)
        if replacement is None:
            raise error
        raise replacement from error

    def _counted(self, delta: int) -> None:
        self.in_use += delta
        for observer in self.observers:
            observer(delta)
