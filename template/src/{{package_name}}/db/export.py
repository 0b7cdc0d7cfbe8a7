"""Streaming exports of a Core select as NDJSON or CSV, on a connection the caller checked out.

On PostgreSQL the database writes the rows (``COPY (...) TO STDOUT``, each NDJSON line put
together from its columns' JSON texts) and the driver's COPY chunks are relayed as they come,
through a small queue: memory stays flat, and closing the generator ends the COPY on the
server. Elsewhere the rows come from a server-side cursor, ``batch_size`` at a time, encoded
here the same way.

The formats, the same on every database: NDJSON has one JSON object per line, keys in column
order, timestamps as the response models write them (ISO 8601, ``Z`` for UTC). CSV has a header
line, then one line per row, ``\\n``-terminated, a field quoted only when it holds a comma, a
quote or a line break, timestamps as in NDJSON.
"""

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import anyio
from pydantic_core import to_json
from sqlalchemy import Boolean, DateTime, Integer, Select, String, Text, case, cast, func, literal
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from ..observability.timing import current_timings
from ..schemas import assume_utc
from .json_rows import json_value


class ExportFormat(StrEnum):
    ndjson = "ndjson"
    csv = "csv"

    @property
    def media_type(self) -> str:
        return "application/x-ndjson" if self is ExportFormat.ndjson else "text/csv"


# One JSON document per line out of COPY's CSV mode: quote and delimiter are control characters
# that JSON text never contains unescaped, so every line comes out verbatim.
_NDJSON_COPY: dict[str, Any] = {"format": "csv", "quote": "\x01", "delimiter": "\x02"}
_CSV_COPY: dict[str, Any] = {"format": "csv"}
# What goes to the client in one send, at least: asyncpg hands over ~8 kB at a time, and every
# send costs the middleware stack and uvicorn the same whatever its size (16k sends per 1M rows
# at 8 kB, 2k at 64 kB).
_CHUNK_BYTES = 64 * 1024
# Chunks in flight between the database and the client, at most (about 1 MB).
_QUEUE_CHUNKS = 16
# asyncpg hands over what one read of the socket got, and stops reading until the handler
# returns. PostgreSQL sends 8 kB at a time, so a reader that keeps up reads 8 kB at a time: 16k
# wakeups per 1M rows, each through asyncpg's COPY loop (~25 us). Waiting a millisecond after a
# small read lets ~60 kB gather in the socket: 2k wakeups, a third of the CPU, and no slower
# (the socket holds more than PostgreSQL sends in that time).
_GATHER_BELOW_BYTES = 32 * 1024
_GATHER_SECONDS = 0.001
# No statement timeout, and a look at the client's socket every second (PostgreSQL 14+).
_COPY_SETTINGS = (
    "BEGIN; SET LOCAL statement_timeout = 0; SET LOCAL client_connection_check_interval = 1000"
)


def csv_header(query: Select[Any]) -> bytes:
    return (",".join(column.name for column in query.selected_columns) + "\n").encode()


async def export(
    conn: AsyncConnection, query: Select[Any], export_format: ExportFormat, *, batch_size: int
) -> AsyncGenerator[bytes]:
    """The rows of ``query`` (its columns named as the export's fields), encoded; the CSV
    header in the first chunk, so that the first chunk comes once the statement has run up to
    its first rows (the endpoint waits for it before the response starts)."""
    header = csv_header(query) if export_format == "csv" else b""
    async with contextlib.aclosing(_rows(conn, query, export_format, batch_size)) as chunks:
        async for chunk in chunks:
            yield header + chunk
            header = b""
    if header:
        yield header


async def _rows(
    conn: AsyncConnection, query: Select[Any], export_format: ExportFormat, batch_size: int
) -> AsyncGenerator[bytes]:
    if conn.dialect.name == "postgresql":
        copy = _copy_out(conn, *_copy_statement(conn, query, export_format))
        async with contextlib.aclosing(copy) as chunks:
            async for chunk in chunks:
                yield chunk
        return
    names = [column.name for column in query.selected_columns]
    encode = _ndjson_chunk if export_format == "ndjson" else _csv_chunk
    result = await conn.stream(query.execution_options(yield_per=batch_size))
    fetch: asyncio.Future[Sequence[Any]] | None = None
    try:
        while True:
            # Each batch is fetched in a task of its own, and the stream waits for it through
            # asyncio.shield. A client that leaves is a cancellation of the stream (Starlette's,
            # under uvicorn), and one landing inside SQLAlchemy's fetch is taken for a lost
            # connection: "database unavailable", the connection terminated under its cursor,
            # an ERROR with a traceback. So it lands here instead, and the batch in flight (a
            # few milliseconds) finishes before the cursor is closed.
            fetch = asyncio.ensure_future(result.fetchmany(batch_size))
            rows = await asyncio.shield(fetch)
            if not rows:
                break
            yield encode(names, rows)
    finally:
        with anyio.CancelScope(shield=True):
            if fetch is not None:
                await asyncio.wait([fetch])
            await result.close()


def _copy_statement(
    conn: AsyncConnection, query: Select[Any], export_format: ExportFormat
) -> tuple[str, dict[str, Any]]:
    columns = query.selected_columns
    if export_format == "ndjson":
        rows = query.with_only_columns(_json_line(columns), maintain_column_froms=True)
        options = _NDJSON_COPY
    else:
        values = (json_value(c).label(c.name) for c in columns)
        rows = query.with_only_columns(*values, maintain_column_froms=True)
        options = _CSV_COPY
    # COPY takes no parameters: the few literals (time zone, formats, keys) are inlined.
    sql = rows.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    return str(sql), options


def _json_line(columns: Iterable[ColumnElement[Any]]) -> ColumnElement[str]:
    """One JSON object of ``columns`` (keys: their names, in order), as text: the bytes
    row_to_json writes over them, with json_value's timestamps.

    Put together with ``||`` from each value's own text, not by row_to_json over the rows as a
    subquery: its per-row record handling and escaping of every text value took 1.76 s of
    server CPU for 1M items against 1.25 s for this (PostgreSQL 15), which is also what a
    bare ``COPY (SELECT row_to_json(...))`` of the same columns costs."""
    line: ColumnElement[str] | None = None
    for position, column in enumerate(columns):
        key = ("{" if position == 0 else ",") + to_json(column.name).decode() + ":"
        pair = literal(key, String) + func.coalesce(_json_text(column), "null")
        line = pair if line is None else line + pair
    if line is None:
        raise ValueError("an export needs at least one column")
    return line + "}"


def _json_text(column: ColumnElement[Any]) -> ColumnElement[str]:
    """``column``'s JSON text (NULL for a NULL), as row_to_json writes it."""
    if isinstance(column.type, DateTime):
        # json_value's text: digits, "-", ":", "T", ".", "Z"; nothing to escape.
        return literal('"', String) + json_value(column) + '"'
    if isinstance(column.type, Boolean):
        return case((column, "true"), (~column, "false"))
    if isinstance(column.type, Integer):
        return cast(column, Text)
    if isinstance(column.type, String):
        return cast(func.to_json(column), Text)
    raise TypeError(f"no JSON text for column {column.name!r} of type {column.type!r}")


async def _copy_out(
    conn: AsyncConnection, statement: str, options: dict[str, Any]
) -> AsyncGenerator[bytes]:
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE_CHUNKS)
    pending = bytearray()  # the driver's pieces (8 kB on average), until a chunk is full

    async def relay(data: bytes) -> None:
        pending.extend(data)  # a copy: the driver hands over its own buffer
        if len(pending) >= _CHUNK_BYTES:
            await chunks.put(bytes(pending))
            pending.clear()
        if len(data) < _GATHER_BELOW_BYTES:
            await asyncio.sleep(_GATHER_SECONDS)

    cut = False  # the client went away: nobody reads the queue any more

    async def copy() -> None:
        try:
            await raw.copy_from_query(statement, output=relay, **options)
        except Exception:
            # Not after a cut: asyncpg (0.32) raises the cancellation of a COPY on a terminated
            # connection as an AttributeError (its issue 726), and a put into the full queue
            # would wait for ever.
            if not cut:
                await chunks.put(None)  # wake the reader, which re-raises this from the task
            raise
        if pending:
            await chunks.put(bytes(pending))
        await chunks.put(None)  # the end; not sent when cancelled: nobody is reading then

    # A slow client holds the COPY back (the queue is bounded): the export must not be cut at
    # statement_timeout. A cut export's connection is closed, not cancelled (below), so the
    # server checks its client's socket while the query runs: one that sends nothing for a
    # while ends too. Both for this transaction only, which is also what keeps them on the
    # COPY's server connection behind PgBouncer's transaction pooling.
    try:
        await raw.execute(_COPY_SETTINGS)
    except BaseException:
        # Not back to the pool inside the transaction: SQLAlchemy ends only the ones it began.
        with anyio.CancelScope(shield=True):
            await conn.invalidate()
        raise
    # COPY on the driver fires no statement event: counted here, for its time up to its first
    # rows (as a cursor's execute is), not the client's pace after that.
    timings = current_timings.get()
    started = time.perf_counter()
    task = asyncio.create_task(copy())
    finished = False
    try:
        chunk = await chunks.get()
        if timings is not None:
            timings.add_statement(time.perf_counter() - started)
        while chunk is not None:
            yield chunk
            chunk = await chunks.get()
        await task  # the COPY's error, if it failed
        finished = True
    finally:
        # Shielded: under uvicorn a client that leaves is a cancellation of the stream, raised
        # here while the generator waits for a chunk, and delivered again at every await of an
        # unshielded cleanup: the connection, half invalidated, stayed checked out.
        with anyio.CancelScope(shield=True):
            if not task.done():
                # The client went away. The connection is closed first, at once: asyncpg (0.32)
                # takes rows that arrive after it cancelled a COPY for the cancel's answer, and
                # the next ones break its protocol ("Fatal error: protocol.data_received() call
                # failed"). Closed, it reads nothing more, and PostgreSQL ends the COPY at its
                # next send. The task then ends wherever it waits (a full queue, say).
                cut = True
                raw.terminate()
                task.cancel()
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: the connection's loss is this cut's, not news
            if finished:
                await raw.execute("COMMIT")
            else:
                await conn.invalidate()


def _json_ready(value: Any) -> Any:
    return assume_utc(value) if isinstance(value, datetime) else value


def _text(value: Any) -> Any:
    return to_json(assume_utc(value)).decode()[1:-1] if isinstance(value, datetime) else value


def _ndjson_chunk(names: list[str], rows: Sequence[Sequence[Any]]) -> bytes:
    return b"".join(
        to_json(dict(zip(names, map(_json_ready, row), strict=True))) + b"\n" for row in rows
    )


def _csv_chunk(_names: list[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([_text(v) for v in row] for row in rows)
    return buffer.getvalue().encode()
