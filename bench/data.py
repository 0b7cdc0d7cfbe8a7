"""The bench's own database: created, migrated and seeded for one run, dropped afterwards."""

import asyncio
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_service.db.engine import async_url, create_engine
from bench_service.db.seed import UNUSABLE_PASSWORD_HASH, seed
from bench_service.settings import DatabaseSettings
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

COPY_BATCH = 50_000

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BenchDatabase:
    url: str  # plain form, as DATABASE_URL takes it
    backend: str  # "postgresql" or "sqlite"
    name: str  # database name, or the SQLite file


def _admin_engine(server_url: str) -> AsyncEngine:
    url = make_url(server_url).set(database="postgres").render_as_string(hide_password=False)
    # CREATE/DROP DATABASE take a second: not the slow queries the engine should warn about.
    return create_engine(
        DatabaseSettings(url=url, pool_size=1, max_overflow=0, slow_query_ms=60_000)
    )


async def create_database(server_url: str, run_id: str, workdir: Path) -> BenchDatabase:
    """A new, empty database ``bench_<run_id>`` on the server of ``server_url`` (PostgreSQL),
    or a new SQLite file in ``workdir``."""
    if async_url(server_url).get_backend_name() == "sqlite":
        path = workdir / f"bench_{run_id}.db"
        return BenchDatabase(url=f"sqlite:///{path}", backend="sqlite", name=str(path))
    name = f"bench_{run_id}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    return BenchDatabase(url=url, backend="postgresql", name=name)


def drop_database(server_url: str, database: BenchDatabase) -> None:
    if database.backend == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(database.name + suffix).unlink(missing_ok=True)
        return
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)'))


async def _admin(server_url: str, statement: str) -> None:
    """Run a statement that cannot run in a transaction (CREATE/DROP DATABASE)."""
    engine = _admin_engine(server_url)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def seed_bench(
    engine: AsyncEngine, *, users: int, projects: int, items: int, on_progress: Progress
) -> None:
    """Fill an empty database. PostgreSQL takes the fast path for a million rows (binary COPY:
    no SQL to parse per row, one stream per batch); SQLite uses ``db.seed.seed``."""
    if engine.dialect.name != "postgresql":
        await seed(engine, users=users, projects=projects, items=items, on_progress=on_progress)
        return
    await _copy_seed(engine, users=users, projects=projects, items=items, on_progress=on_progress)


def _batches(
    count: int, make_row: Callable[[int], tuple[object, ...]]
) -> Iterator[list[tuple[object, ...]]]:
    for start in range(0, count, COPY_BATCH):
        yield [make_row(n) for n in range(start + 1, min(start + COPY_BATCH, count) + 1)]


async def _copy_seed(
    engine: AsyncEngine, *, users: int, projects: int, items: int, on_progress: Progress
) -> None:
    rng = random.Random(42)  # noqa: S311 - demo data, not secrets
    tables: list[tuple[str, list[str], int, Callable[[int], tuple[object, ...]]]] = [
        (
            "users",
            ["email", "username", "name", "role", "password_hash"],
            users,
            lambda n: (
                f"user{n}@example.com",
                f"user{n}",
                f"User {n}",
                "admin" if n % 50 == 0 else "member",
                UNUSABLE_PASSWORD_HASH,
            ),
        ),
        (
            "projects",
            ["name", "description", "owner_id", "item_count"],
            projects,
            lambda n: (f"Project {n}", "", rng.randint(1, users), 0),
        ),
        (
            "items",
            ["project_id", "name", "price_cents", "quantity"],
            items,
            lambda n: (
                rng.randint(1, projects),
                f"Item {n}",
                rng.randrange(100, 100_000),
                rng.randrange(0, 500),
            ),
        ),
    ]
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection  # the asyncpg connection, for its COPY support
        assert driver is not None
        for table, columns, count, make_row in tables:
            for rows in _batches(count, make_row):
                await driver.copy_records_to_table(table, records=rows, columns=columns)
                on_progress(table, len(rows), count)
        await driver.execute(
            "UPDATE projects SET item_count = counts.n FROM ("
            " SELECT project_id, count(*) AS n FROM items GROUP BY project_id"
            ") AS counts WHERE projects.id = counts.project_id"
        )
        # What autovacuum would have done before a service serves these rows: hint bits set and
        # the visibility map written, so the first full scan (the export) does not pay for them
        # and the baseline after it does not skip them.
        await driver.execute("VACUUM ANALYZE")
