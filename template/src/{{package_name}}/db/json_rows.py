"""The fast read path: rows of a response model as JSON bytes, in one statement, on one
autocommit connection.

Declare a ``Shape`` (which column feeds which field of the response model) and a ``JsonRows``
(the statement: joins, filter, order, limit); ``read`` (or ``fetch`` on a connection of yours)
returns one JSON document per row, written by the database (PostgreSQL's ``row_to_json``,
SQLite's ``json_object``): no ORM objects, no Python row decoding, no validation; the bytes are
the ones the response model would serialize (``tests/test_fast_reads.py`` checks it on both).

Reads run outside a transaction: a single statement needs none, so no BEGIN and ROLLBACK round
trips around it. The statement is built and compiled once per dialect, and each call runs it on
the driver itself (``engine.fetch_on_driver``: still timed, logged and turned into a 503 in an
outage): on asyncpg, prepared once per connection by its statement cache (behind PgBouncer,
parsed with each run); on aiosqlite, statement and fetch in one hop to its thread. ``read``
takes its connection from the pool without an ``AsyncConnection`` around it
(``engine.read_on_driver``).
"""

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from pydantic import BaseModel
from sqlalchemy import (
    Boolean,
    DateTime,
    Integer,
    Select,
    String,
    Subquery,
    Text,
    bindparam,
    case,
    cast,
    func,
    inspect,
    literal,
    literal_column,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from .engine import fetch_on_driver, read_on_driver

# Types whose JSON text from PostgreSQL and SQLite is byte for byte Pydantic's (or made so
# below). Anything else (floats, decimals, JSON columns) is refused rather than risk other bytes.
_SUPPORTED_TYPES = (Integer, String, Boolean, DateTime)

# A table column or a mapped attribute (``Project.id``).
Column = ColumnElement[Any] | QueryableAttribute[Any]


def _name(table: Any) -> str:
    return getattr(table, "__name__", None) or str(getattr(table, "name", table))


def _expression(column: Column) -> ColumnElement[Any]:
    return column.__clause_element__() if isinstance(column, QueryableAttribute) else column


@asynccontextmanager
async def read_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection in autocommit mode, for read-only work of one statement each."""
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # The sqlite3 module starts no transaction for a SELECT: it already is autocommit.
            # Switching would cost two hops to aiosqlite's thread, ~15% of an uncached page.
            yield conn
        else:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")


class Shape:
    """Where each field of ``model`` comes from: by default the column of the same name in
    ``table`` (a mapped class or a ``Table``), so a field added to the model is read as soon as
    the table has its column; ``fields`` name the others (a column of another name or table, or
    a ``Shape`` for a nested model). The JSON keys are the model's, in its order."""

    def __init__(
        self, model: type[BaseModel], table: Any = None, **fields: "Column | Shape"
    ) -> None:
        unknown = [name for name in fields if name not in model.model_fields]
        if unknown:
            raise ValueError(f"{model.__name__} has no field {', '.join(unknown)}")
        columns = inspect(table).columns if table is not None else {}
        self.fields: dict[str, ColumnElement[Any] | Shape] = {}
        for name in model.model_fields:
            source = fields.get(name)
            if source is None:
                source = columns.get(name)
            if source is None:
                fix = f"give it in the Shape ({name}=<column or Shape>)"
                if table is None:
                    raise ValueError(f"{model.__name__}.{name}: no source; {fix} or pass a table")
                raise ValueError(
                    f"{model.__name__}.{name}: {_name(table)} has no column {name}; {fix}"
                    " or add the column (and its migration)"
                )
            field = source if isinstance(source, Shape) else _expression(source)
            if not isinstance(field, Shape) and not isinstance(field.type, _SUPPORTED_TYPES):
                raise TypeError(f"{model.__name__}.{name}: column type {field.type} unsupported")
            self.fields[name] = field
        self.model = model

    def json_column(self) -> ColumnElement[str]:
        """The row as the model's JSON, written by the database."""
        return row_json(
            {
                name: source.json_column() if isinstance(source, Shape) else source
                for name, source in self.fields.items()
            }
        )


class JsonRow(NamedTuple):
    json: bytes
    keys: tuple[Any, ...]


class KeysetRows(NamedTuple):
    """A keyset page (``JsonRows.read_keyset_page``): its rows as one JSON array, the first key
    of its last row (None when it has none), and whether more rows follow."""

    json: bytes
    last_key: Any
    more: bool


class _Compiled(NamedTuple):
    sql: str
    names: tuple[str, ...]
    fixed: dict[str, Any]
    bind_processors: tuple[Callable[[Any], Any] | None, ...]
    key_processors: tuple[Callable[[Any], Any] | None, ...]


class JsonRows:
    """One read statement whose rows are ``shape``'s model as JSON.

    ``build`` gets ``select(<row columns>, *keys)`` and adds FROM/JOIN/WHERE/ORDER BY/LIMIT,
    with ``bindparam`` for whatever varies per request. ``keys`` are extra columns returned
    beside each row's JSON (the keyset position, for instance).

    ``over``: a subquery that picks the rows' ids (its own WHERE, ORDER BY, OFFSET, LIMIT). The
    statement is then one row per id, ordered by the subquery's columns, and ``build`` makes the
    JSON of the row with that id (a WHERE on the subquery's column; no LIMIT). The database builds
    JSON only for the rows returned: PostgreSQL computes a select list below LIMIT/OFFSET, so JSON
    beside OFFSET 9000 would be built for 9,050 rows. Each JSON is a correlated subquery, an
    index lookup per id whatever plan the page's parameters get.
    """

    def __init__(
        self,
        shape: Shape,
        build: Callable[[Select[Any]], Select[Any]],
        keys: tuple[Column, ...] = (),
        over: Subquery | None = None,
    ) -> None:
        self.shape = shape
        self._build = build
        self._keys = tuple(_expression(key) for key in keys)
        self._over = over
        self._statements: dict[str, Select[Any]] = {}
        self._compiled: dict[tuple[str, str], _Compiled] = {}

    def statement(self, dialect: str) -> Select[Any]:
        if dialect not in self._statements:
            row = self.shape.json_column()
            if dialect == "postgresql":
                row = cast(row, Text)  # as text: asyncpg would decode json into dicts
            if self._over is None:
                statement = self._build(select(row, *self._keys))
            else:
                row_of_id = self._build(select(row)).scalar_subquery()
                statement = (
                    select(row_of_id, *self._keys).select_from(self._over).order_by(*self._over.c)
                )
            self._statements[dialect] = statement
        return self._statements[dialect]

    def array_statement(self) -> Select[Any]:
        """PostgreSQL: the ``over`` statement's rows as one JSON array, joined by the database
        in the subquery's order (no JSON array of JSON to re-encode: ``json_agg`` would add
        spaces). One text value instead of a row per item: ~50 us less CPU a page of 50 in
        the service (in process; no Record, str and bytes per row)."""
        assert self._over is not None, "an array needs the order of an ``over`` subquery"
        row = cast(self.shape.json_column(), Text)
        row_of_id = self._build(select(row)).scalar_subquery()
        comma = literal_column("','", Text)
        items = func.string_agg(row_of_id, comma, type_=Text).aggregate_order_by(*self._over.c)
        array = literal("[") + func.coalesce(items, "") + literal("]")
        return select(array).select_from(self._over)

    def keyset_statement(self) -> Select[str, Any, bool]:
        """PostgreSQL, a keyset page in one row: the statement's rows (run with ``limit`` one
        above the page's size) numbered in the order of the first key, then the JSON array of
        all but the last of ``limit`` (the page, joined by the database as in
        ``array_statement``), the first key of the page's last row, and whether the one more
        row came. The first key orders the page, ascending. One text value instead of a row
        per item: a keyset page of 50 ran 2.28 M instructions in process as rows, 1.92 M an
        offset page 1 as one array."""
        assert self._keys, "a keyset page needs its position: keys=(<the ordering column>,)"
        key = self._keys[0]
        rows = self._build(
            select(
                cast(self.shape.json_column(), Text).label("json"),
                key.label("position"),
                func.row_number().over(order_by=key).label("n"),
            )
        ).subquery("page_rows")
        limit: BindParameter[int] = bindparam("limit")
        on_page = rows.c.n < limit
        comma = literal_column("','", Text)
        items = func.string_agg(rows.c.json, comma, type_=Text).aggregate_order_by(rows.c.n)
        array = literal("[") + func.coalesce(items.filter(on_page), "") + literal("]")
        last_key = func.max(rows.c.position).filter(on_page)  # ascending, as keyset pages go
        return select(array, last_key, func.count() >= limit).select_from(rows)

    async def read_keyset_page(self, engine: AsyncEngine, **params: Any) -> KeysetRows:
        """A keyset page: ``params["limit"]`` is one above the page's size (the one more row
        says whether there are more pages). On PostgreSQL one row, written by the database
        (``keyset_statement``)."""
        size = params["limit"] - 1
        if engine.dialect.name != "postgresql":
            compiled, rows = await self._read_on_driver(engine, params)
            page = rows[:size]
            last_key = _first_key(compiled, page[-1]) if page else None
            return KeysetRows(_array_of_rows(page), last_key, len(rows) > size)
        _, rows = await self._read_on_driver(engine, params, kind="keyset")
        ((array, last_key, more),) = rows
        return KeysetRows(array.encode(), last_key, more)

    async def read_array(self, engine: AsyncEngine, **params: Any) -> bytes:
        """``json_array`` of ``read``'s rows (an ``over`` statement's); on PostgreSQL, written
        by the database (``array_statement``)."""
        if engine.dialect.name != "postgresql":
            _, rows = await self._read_on_driver(engine, params)
            return _array_of_rows(rows)
        _, rows = await self._read_on_driver(engine, params, kind="array")
        array: str = rows[0][0]
        return array.encode()

    async def read(self, engine: AsyncEngine, **params: Any) -> list[JsonRow]:
        """``fetch`` on a connection of its own, checked out for the driver alone
        (``engine.read_on_driver``), with no ``AsyncConnection`` around it."""
        compiled, rows = await self._read_on_driver(engine, params)
        return _json_rows(compiled, rows)

    async def _read_on_driver(
        self, engine: AsyncEngine, params: dict[str, Any], *, kind: str = "rows"
    ) -> tuple[_Compiled, Sequence[Any]]:
        compiled, args = self._driver_args(engine.dialect, params, kind=kind)
        return compiled, await read_on_driver(engine, compiled.sql, args)

    async def fetch(self, conn: AsyncConnection, **params: Any) -> list[JsonRow]:
        compiled, args = self._driver_args(conn.dialect, params)
        sync_conn = conn.sync_connection
        assert sync_conn is not None, "fetch needs a started connection"
        return _json_rows(compiled, await fetch_on_driver(sync_conn, compiled.sql, args))

    def _driver_args(
        self, dialect: Dialect, params: dict[str, Any], *, kind: str = "rows"
    ) -> tuple[_Compiled, list[Any]]:
        compiled = self._compile(dialect, kind=kind)
        args = []
        for name, to_driver in zip(compiled.names, compiled.bind_processors, strict=True):
            try:
                value = params[name] if name in params else compiled.fixed[name]
            except KeyError:
                raise TypeError(f"fetch() needs a value for bindparam {name!r}") from None
            args.append(value if to_driver is None else to_driver(value))
        return compiled, args

    def _compile(self, dialect: Dialect, *, kind: str) -> _Compiled:
        """The statement compiled once per dialect for its driver: the SQL (``$1`` for asyncpg,
        ``?`` for aiosqlite), the names of its parameters in order, the values of those fixed
        in the statement (a ``bindparam`` without a value is the caller's to give), and the
        conversions SQLAlchemy would apply on the way in (per parameter) and out (per key
        column): a SQLite timestamp is text, a SQLite boolean 0 or 1."""
        cache_key = (dialect.name, kind)
        if cache_key not in self._compiled:
            statements = {
                "rows": lambda: self.statement(dialect.name),
                "array": self.array_statement,
                "keyset": self.keyset_statement,
            }
            statement = statements[kind]()
            compiled = statement.compile(dialect=dialect)
            names = tuple(compiled.positiontup or ())
            binds = compiled.binds
            self._compiled[cache_key] = _Compiled(
                sql=compiled.string,
                names=names,
                fixed={name: bind.value for name, bind in binds.items() if not bind.required},
                bind_processors=tuple(
                    binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
                ),
                key_processors=tuple(
                    key.type.dialect_impl(dialect).result_processor(dialect, None)
                    for key in self._keys
                ),
            )
        return self._compiled[cache_key]


def _json_rows(compiled: _Compiled, rows: Iterable[Sequence[Any]]) -> list[JsonRow]:
    """Rows of (json, *keys) as JsonRows, the keys converted as SQLAlchemy would."""
    convert = compiled.key_processors
    if not any(convert):
        return [JsonRow(json.encode(), tuple(keys)) for json, *keys in rows]
    return [
        JsonRow(
            json.encode(),
            tuple(
                value if to is None else to(value) for to, value in zip(convert, keys, strict=True)
            ),
        )
        for json, *keys in rows
    ]


def _first_key(compiled: _Compiled, row: Sequence[Any]) -> Any:
    """The first key column of a driver's row of (json, *keys), converted as SQLAlchemy would."""
    to = compiled.key_processors[0]
    return row[1] if to is None else to(row[1])


def _array_of_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """``json_array`` of the driver's rows of (json, *keys): one join and one encode, where
    ``JsonRow`` per row cost ~20 us a page of 50."""
    return ("[" + ",".join([row[0] for row in rows]) + "]").encode()


def json_array(rows: list[JsonRow]) -> bytes:
    """The rows as one JSON array: what Pydantic writes for ``list[Model]``."""
    return b"[" + b",".join(row.json for row in rows) + b"]"


def row_json(fields: dict[str, ColumnElement[Any]]) -> ColumnElement[str]:
    """One JSON object of ``fields``, keys in order, values as Pydantic writes them (a nested
    ``row_json`` is a nested object)."""
    return _RowToJson(tuple(fields), tuple(json_value(value) for value in fields.values()))


def json_value(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``column`` as Pydantic's JSON value: timestamps as its text, SQLite's 0/1 as booleans."""
    if isinstance(column.type, DateTime | Boolean):
        return _JsonValue(column)
    return column


class _RowToJson(ColumnElement[str]):
    """PostgreSQL: ``(SELECT row_to_json(_r) FROM (SELECT <value> AS <name>, ...) AS _r)``,
    compact JSON (json_build_object would add spaces) with the keys in the model's order.
    SQLite: ``json_object('<name>', <value>, ...)``, compact and in order too."""

    type = String()
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's own declaration style
        ("names", InternalTraversal.dp_plain_obj),
        ("values", InternalTraversal.dp_clauseelement_tuple),
    ]

    def __init__(self, names: tuple[str, ...], values: tuple[ColumnElement[Any], ...]) -> None:
        self.names = names
        self.values = values


class _JsonValue(ColumnElement[Any]):
    """A timestamp or boolean column as the JSON value Pydantic writes for it, per dialect."""

    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's own declaration style
        ("column", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column
        self.type = String() if isinstance(column.type, DateTime) else column.type


@compiles(_RowToJson, "postgresql")
def _compile_row_to_json(element: _RowToJson, compiler: SQLCompiler, **kw: Any) -> str:
    quote = compiler.preparer.quote
    fields = ", ".join(
        f"{compiler.process(value, **kw)} AS {quote(name)}"
        for name, value in zip(element.names, element.values, strict=True)
    )
    # Only compiled SQL and quoted identifiers from the Shape go in: values are bound parameters.
    return f"(SELECT row_to_json(_r) FROM (SELECT {fields}) AS _r)"  # noqa: S608


@compiles(_RowToJson, "sqlite")
def _compile_json_object(element: _RowToJson, compiler: SQLCompiler, **kw: Any) -> str:
    # A nested json_object is an argument itself, not a subquery, so SQLite keeps it JSON.
    pairs = ", ".join(
        f"{compiler.render_literal_value(name, String())}, {compiler.process(value, **kw)}"
        for name, value in zip(element.names, element.values, strict=True)
    )
    return f"json_object({pairs})"


@compiles(_JsonValue, "postgresql")
def _compile_postgresql_json_value(element: _JsonValue, compiler: SQLCompiler, **kw: Any) -> str:
    column = element.column
    if not isinstance(column.type, DateTime):
        return compiler.process(column, **kw)  # row_to_json writes booleans as true/false
    # Pydantic writes ISO 8601, "Z" for UTC, and six digits of microseconds unless they are all
    # zero. A column without a time zone holds UTC (Prisma's TIMESTAMP(3)): schemas.UtcDatetime
    # says so too. One to_char and a replace (".000000" can only be the fraction): half the
    # per-row cost of two to_char calls and a test of the microseconds (measured on an export).
    local = column.op("AT TIME ZONE")(literal("UTC")) if column.type.timezone else column
    text = func.to_char(local, 'YYYY-MM-DD"T"HH24:MI:SS.US', type_=String)
    return compiler.process(func.replace(text, ".000000", "", type_=String) + "Z", **kw)


@compiles(_JsonValue, "sqlite")
def _compile_sqlite_json_value(element: _JsonValue, compiler: SQLCompiler, **kw: Any) -> str:
    column = element.column
    if isinstance(column.type, Boolean):
        # json() of the text: a JSON true/false for json_object, NULL stays null.
        value = case((column, "true"), (~column, "false"))
        return compiler.process(func.json(value), **kw)
    # SQLAlchemy stores a timestamp as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC (CURRENT_TIMESTAMP,
    # a server default, without the fraction): Pydantic's text is that with "T", "Z" and the
    # fraction only when it is not all zeros.
    text = func.replace(func.replace(column, " ", "T", type_=String), ".000000", "", type_=String)
    return compiler.process(text + "Z", **kw)
