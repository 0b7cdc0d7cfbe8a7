"""SQLite's one-statement reads on the event loop's own thread, for as long as they stay short.

aiosqlite runs each statement on a thread of its connection. With several requests in flight,
handing the GIL back and forth between those threads and the event loop costs more than the
reads themselves: an uncached keyset page of 50, eight requests at a time in process, took
1,322 us of CPU a request through aiosqlite and 552 us read here, where SQLite's own work is
~90 us of it. One request at a time both cost ~680 us: the threads bought no parallelism, only
contention.

A statement on the loop's thread holds up every other request while it runs, so each read has
a budget: SQLite's progress handler interrupts it after ``budget_seconds``, and
``engine.read_on_driver`` runs it again through aiosqlite (a read in autocommit is safe to
repeat), as it does any read that fails here: a read that would wait for a lock does not wait
(``timeout=0``), and an error (a missing table, an unreadable file) is raised by SQLAlchemy's
path, with its 503s. The connection is opened on the first read and only reads
(``query_only``).
"""

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

Timed = Callable[[float, str], None]
# SQLite calls the progress handler every this many virtual machine instructions: ~1.5 times
# for a page of 50, unmeasurable next to the read (~90 us).
_CHECK_EVERY_INSTRUCTIONS = 1000


class InlineReads:
    def __init__(
        self,
        database: str,
        *,
        uri: bool,
        budget_seconds: float,
        timed: Timed,
    ) -> None:
        self._database = database
        self._uri = uri
        self._budget_seconds = budget_seconds
        self._timed = timed
        self._connection: sqlite3.Connection | None = None
        self._deadline = 0.0
        self.served = 0  # reads answered here
        self.handed_off = 0  # reads left to aiosqlite: over budget, locked out or failed
        self.observers: list[Callable[[], None]] = []  # called at each hand-off

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._database,
            uri=self._uri,
            timeout=0,
            isolation_level=None,
            # Only ever used by the thread running the event loop, one statement at a time; a
            # test's second loop (another thread) may take it over after the first is done.
            check_same_thread=False,
        )
        connection.execute("PRAGMA query_only = ON")
        connection.set_progress_handler(self._over_budget, _CHECK_EVERY_INSTRUCTIONS)
        return connection

    def _over_budget(self) -> bool:
        return time.perf_counter() > self._deadline

    def fetch(self, sql: str, args: Sequence[Any]) -> list[Any] | None:
        """The rows of ``sql``, or None: the read is the caller's to run through aiosqlite."""
        start = time.perf_counter()
        self._deadline = start + self._budget_seconds
        try:
            if self._connection is None:
                self._connection = self._connect()
            rows = self._connection.execute(sql, args).fetchall()
        except sqlite3.Error:
            self.handed_off += 1
            for observer in self.observers:
                observer()
            return None
        self.served += 1
        self._timed(time.perf_counter() - start, sql)
        return rows

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
