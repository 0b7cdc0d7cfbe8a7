"""Run Alembic from code: the CLI's ``db upgrade`` and the tests use this, no alembic.ini needed."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from ..settings import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        # Alembic's config is an ini parser: a literal % must be doubled.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Migrate to ``revision``. Calls ``asyncio.run``: never call it from a running event loop."""
    url = make_url(database_url or DatabaseSettings().url)
    if url.get_backend_name() == "sqlite" and url.database:
        # SQLite creates the file but not its directory (a fresh checkout has no var/).
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
