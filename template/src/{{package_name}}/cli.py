"""Command line: serve, db upgrade and downgrade, seed, bench."""

import asyncio
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from rich.progress import Progress, TaskID

from .api.projects import LIST_NAMESPACE
from .bench.command import bench
from .cache import create_cache
from .db import migrate
from .db.engine import create_engine
from .db.seed import seed as seed_database
from .logs import configure_logging
from .server import BoundedHttpToolsProtocol
from .settings import Settings, SettingsError, get_settings

# What --reload watches: this package, not the working directory (its .venv alone holds
# thousands of .py files, which uvicorn's polling reloader stats every quarter second).
SOURCE_DIR = Path(__file__).resolve().parent

app = typer.Typer(help=__doc__, no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.command()(bench)


@app.callback()
def _check_settings() -> None:
    # Every command needs valid settings: say what is wrong in one line, not in a traceback.
    try:
        get_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind", min=1, max=65535, envvar="PORT")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes", min=1, envvar="WEB_CONCURRENCY")
    ] = 1,
    graceful_timeout: Annotated[
        int, typer.Option(help="Seconds in-flight requests get to finish on SIGTERM", min=0)
    ] = 20,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development)")] = False,
) -> None:
    """Run the service with uvicorn (uvloop and httptools, with bounds on header size, slow
    clients and connections)."""
    settings = get_settings()
    configure_logging(settings.app)
    # Workers are separate processes: their Prometheus metrics meet in files in one directory,
    # which must be set before they start and be empty at each start.
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # uvicorn re-raises SIGTERM once its graceful shutdown is done: a stop that went as asked
    # ends with exit status 0, not death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run(
            f"{__package__}.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            reload=reload,
            reload_dirs=[str(SOURCE_DIR)] if reload else None,
            loop="auto",
            # Header size, request timeouts and the connection limit (server.py).
            http=BoundedHttpToolsProtocol,
            timeout_keep_alive=settings.app.keep_alive_seconds,
            timeout_graceful_shutdown=graceful_timeout,
            # Logging is configure_logging's; the access log (with request ids) is the app's.
            log_config=None,
            access_log=False,
            log_level=settings.app.log_level.lower(),
            # A worker that does not answer the supervisor's ping in time is killed and replaced;
            # uvicorn's 5 s is shorter than a worker's start on a busy or CPU-limited container,
            # where every worker was killed while still importing, again and again.
            timeout_worker_healthcheck=30,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _exit_cleanly(_signal: int, _frame: object) -> None:
    raise SystemExit(0)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    migrate.upgrade(get_settings().database.url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Revert migrations down to REVISION ("base" removes every table)."""
    migrate.downgrade(get_settings().database.url, revision)
    typer.echo(f"database at {revision}")


@app.command()
def seed(
    users: Annotated[int, typer.Option(min=0, help="Users to create")] = 1_000,
    projects: Annotated[int, typer.Option(min=0, help="Projects to create")] = 10_000,
    items: Annotated[int, typer.Option(min=0, help="Items to create")] = 100_000,
    random_seed: Annotated[int, typer.Option(help="Seed for reproducible data")] = 42,
) -> None:
    """Bulk-insert demo data in batches, with a progress bar (seconds for 100k items)."""
    try:
        asyncio.run(_seed(users=users, projects=projects, items=items, random_seed=random_seed))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


async def _seed(**counts: int) -> None:
    settings = get_settings()
    engine = create_engine(settings.database)
    try:
        with Progress() as progress:
            tasks: dict[str, TaskID] = {}

            def advance(table: str, done: int, total: int) -> None:
                if table not in tasks:
                    tasks[table] = progress.add_task(f"{table:<8}", total=total)
                progress.advance(tasks[table], done)

            await seed_database(engine, **counts, on_progress=advance)
    finally:
        await engine.dispose()
    if counts["projects"] or counts["items"]:
        typer.echo(await _invalidate_project_pages(settings))


async def _invalidate_project_pages(settings: Settings) -> str:
    """A running service caches project pages and their total (api/projects.py), and a seed
    changes both; project details keep their item counts (new items go to new projects)."""
    cache = create_cache(settings)
    try:
        if not cache.shared:
            return (
                "cached project pages not invalidated: a running service's cache is in its own"
                " memory; its project pages show what they held before the seed for up to"
                f" {settings.cache.ttl_seconds} s (CACHE_TTL_SECONDS), or restart it"
            )
        if await cache.invalidate_namespace(LIST_NAMESPACE):
            return "cached project pages invalidated"
        return (
            "warning: cached project pages not invalidated (the cache did not answer): a running"
            f" service may show them for up to {settings.cache.ttl_seconds} s (CACHE_TTL_SECONDS)"
        )
    finally:
        await cache.close()
