"""Bulk demo data: the CLI's ``seed`` and the tests share this one implementation."""

import random
from collections.abc import Callable

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from .models import Base, Item, Project, User

BATCH_SIZE = 10_000
# Without a password hash given, seeded accounts cannot sign in: "!" is no hasher's output.
UNUSABLE_PASSWORD_HASH = "!"  # noqa: S105
# The CLI's `seed` gives every seeded user this password outside production (README.md), so a
# developer can sign in as user1 at once. Published: never a password of real data.
DEMO_PASSWORD = "demo-password"  # noqa: S105

_items_of_project = (
    select(func.count()).where(Item.project_id == Project.id).correlate(Project).scalar_subquery()
)


def _user_row(n: int, password_hash: str) -> dict[str, object]:
    return {
        "email": f"user{n}@example.com",
        "username": f"user{n}",
        "name": f"User {n}",
        "role": "admin" if n % 50 == 0 else "member",
        "password_hash": password_hash,
    }


async def seed(
    engine: AsyncEngine,
    *,
    users: int,
    projects: int,
    items: int,
    random_seed: int = 42,
    password_hash: str = UNUSABLE_PASSWORD_HASH,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Append ``users`` users, ``projects`` projects owned by them and ``items`` items in them,
    in batches of multi-row INSERTs; then set each project's denormalized item_count and
    gather planner statistics. Every user gets ``password_hash`` (one hash for all: demo data)."""
    if users < 1 and (projects or items):
        raise ValueError("projects need at least one user to own them")
    if projects < 1 and items:
        raise ValueError("items need at least one project")
    rng = random.Random(random_seed)  # noqa: S311 - demo data, not secrets
    # One transaction: a seed that fails leaves nothing behind. Owners and projects are the ids
    # the database assigned (RETURNING), never predicted: a sequence runs ahead of max(id) once
    # rows were deleted, and a predicted id would point at nothing (or at someone else's row).
    async with engine.begin() as conn:
        first_user = (await conn.scalar(select(func.max(User.id))) or 0) + 1

        async def insert_rows(
            table: type[Base], count: int, make_row: Callable[[int], dict[str, object]]
        ) -> list[int]:
            """Insert in batches; the ids the database gave the rows, in order."""
            statement = insert(table).returning(table.id)  # type: ignore[attr-defined]
            ids: list[int] = []
            for start in range(0, count, BATCH_SIZE):
                rows = [make_row(n) for n in range(start, min(start + BATCH_SIZE, count))]
                if table is Item:  # nothing refers to items: no ids to bring back
                    await conn.execute(insert(table), rows)
                else:
                    ids.extend((await conn.execute(statement, rows)).scalars())
                if on_progress is not None:
                    on_progress(table.__tablename__, len(rows), count)
            return sorted(ids)

        user_ids = await insert_rows(
            User, users, lambda n: _user_row(first_user + n, password_hash)
        )

        def project_row(n: int) -> dict[str, object]:
            owner = rng.choice(user_ids)
            return {"name": f"Project {n}", "description": "", "owner_id": owner, "item_count": 0}

        project_ids = await insert_rows(Project, projects, project_row)

        def item_row(n: int) -> dict[str, object]:
            return {
                "project_id": rng.choice(project_ids),
                "name": f"Item {n}",
                "price_cents": rng.randrange(100, 100_000),
                "quantity": rng.randrange(0, 500),
            }

        await insert_rows(Item, items, item_row)
        if items:
            await conn.execute(update(Project).values(item_count=_items_of_project))
    await analyze(engine)


async def analyze(engine: AsyncEngine) -> None:
    """Planner statistics for the tables, now: without them a freshly loaded PostgreSQL plans
    a hash join over every row for a 50-row page until autovacuum comes by; SQLite has none
    until ANALYZE (sqlite_stat1)."""
    tables = ", ".join(table.__tablename__ for table in (User, Project, Item))
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"ANALYZE {tables}"))
        else:
            await conn.execute(text("ANALYZE"))
            await conn.execute(text("PRAGMA optimize"))
