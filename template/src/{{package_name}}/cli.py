"""Command line: serve, worker, db upgrade and downgrade, seed, bench."""

# Each command imports what it runs when it runs: importing the app, the database layer and the
# migration tool takes ~2 s of CPU, which `--help` and a start refused for bad settings (one
# line) should not pay.

import asyncio
import errno
import importlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .settings import UPGRADE_ADVICE, Settings, SettingsError, get_settings

# What --reload watches: this package, not the working directory (its .venv alone holds
# thousands of .py files, which uvicorn's polling reloader stats every quarter second).
SOURCE_DIR = Path(__file__).resolve().parent


class _ExplainedErrors(TyperGroup):
    """Expected failures (a database that is missing or unreachable, Redis down, Prisma's CLI
    not installed) end in one or two lines naming the fix and exit status 1; ``--debug`` (or
    any other error) shows the traceback."""

    # Any: the Context typer's groups take is its vendored click's (typer._click, private).
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.Exit:  # a command's own exit status (bad settings: 2): nothing to explain
            raise
        except Exception as exc:
            message = None if ctx.meta.get(_DEBUG) else explain(exc)
            if message is None:
                raise
            typer.echo(f"error: {message}", err=True)
            typer.echo(f"(`{ctx.info_name} --debug ...` shows the traceback)", err=True)
            raise typer.Exit(1) from None


_DEBUG = f"{__package__}.debug"

app = typer.Typer(help=__doc__, no_args_is_help=True, cls=_ExplainedErrors)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _add_development_commands() -> None:
    """``bench`` (load-test a route) is a development tool, ``src/<package>_bench``, outside
    the wheel and the image: registered only where it can be imported (a checkout)."""
    try:
        tool = importlib.import_module(f"{__package__}_bench.command")
    except ModuleNotFoundError:
        return
    app.command()(tool.bench)


_add_development_commands()


@app.callback()
def _check_settings(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an expected error too.")
    ] = False,
) -> None:
    ctx.meta[_DEBUG] = debug
    # Every command needs valid settings: say what is wrong in one line, not in a traceback.
    try:
        get_settings()
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


# SQLSTATEs with a fix to name: no such database, a refused role or password, and the server
# unreachable, shutting down or out of connections.
_NO_DATABASE = "3D000"
_REFUSED_LOGIN = ("28000", "28P01")
_UNREACHABLE = ("08", "57P01", "57P02", "57P03", "53300")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: causes, contexts and SQLAlchemy's ``orig``."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__, getattr(current, "orig", None)]


def explain(exc: BaseException) -> str | None:
    """One line saying what is wrong and how to fix it, for a failure a setup can cause; None
    for anything else (a bug: its traceback is the useful answer)."""
    from sqlalchemy.engine import make_url

    from .db import migrate
    from .db.engine import SchemaBehind

    # Prisma's db/migrate.py raises it, with the Prisma CLI's output; Alembic's has none.
    migration_error: type[Exception] | None = getattr(migrate, "MigrationError", None)
    try:
        url = make_url(get_settings().database.url)
    except SettingsError:  # the callback said so already, and exits 2
        return None
    host, port = url.host or "localhost", url.port or 5432
    no_database = (
        f"database {url.database} does not exist on {host}:{port}: create it"
        f" (`createdb -h {host} -p {port} -U {url.username or 'postgres'} {url.database}`)"
        " or point DATABASE_URL at another"
    )
    refused = f"PostgreSQL at {host}:{port} refused user {url.username}: fix DATABASE_URL"
    unreachable = f"cannot reach PostgreSQL at {host}:{port}: start it, or fix DATABASE_URL"
    for error in _chain(exc):
        if migration_error is not None and isinstance(error, migration_error):
            output = str(error)
            if "does not exist" in output:
                return no_database
            if "Authentication failed" in output or "denied access" in output:
                return refused
            if "Can't reach database server" in output:
                return unreachable
            # Not found (`npm ci`), Node.js missing, or Prisma's own "Error: ..." line.
            errors = [line for line in output.splitlines() if line.startswith("Error")]
            return (errors[-1] if errors else output.splitlines()[0]).removeprefix("Error: ")
        if isinstance(error, SchemaBehind):
            return f"the database has no tables yet, or lacks migrations: {UPGRADE_ADVICE}"
        sqlstate = str(getattr(error, "sqlstate", None) or "")
        if sqlstate == _NO_DATABASE:
            return no_database
        if sqlstate in _REFUSED_LOGIN:
            return refused
        # redis-py's ConnectionError is not an OSError (and only Redis renders install it).
        if type(error).__module__.startswith("redis.") and "Connection" in type(error).__name__:
            return f"cannot reach Redis ({error}): start it, or fix REDIS_URL"
        if sqlstate.startswith(_UNREACHABLE) or isinstance(
            error, ConnectionError | socket.gaierror | TimeoutError
        ):
            return f"{unreachable} ({type(error).__name__})"
    return None


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
    import uvicorn

    from .http_protocol import BoundedHttpToolsProtocol
    from .observability.logs import configure_logging

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
            # Header size, request timeouts and the connection limit (http_protocol.py).
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


@app.command()
def worker(
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve the worker's /metrics on this port (all interfaces)",
            min=1,
            max=65535,
            envvar="WORKER_METRICS_PORT",
        ),
    ] = None,
    heartbeat_file: Annotated[
        Path | None,
        typer.Option(
            help="Touch this file every 5 s while running (for a liveness probe)",
            envvar="WORKER_HEARTBEAT_FILE",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Run queued jobs (item imports) until SIGTERM or SIGINT: then the running jobs finish."""
    from .observability.logs import configure_logging
    from .worker import NoQueueToServe, run_worker

    settings = get_settings()
    configure_logging(settings.app)
    try:
        asyncio.run(run_worker(settings, metrics_port=metrics_port, heartbeat_file=heartbeat_file))
    except OSError as exc:
        if metrics_port is None or exc.errno != errno.EADDRINUSE:
            raise
        typer.echo(f"error: the metrics port {metrics_port} is in use: {exc}", err=True)
        raise typer.Exit(1) from None
    except NoQueueToServe:
        typer.echo(
            "error: jobs run in the web process (cache_backend=memory): `serve` runs them,"
            " no worker is needed",
            err=True,
        )
        raise typer.Exit(1) from None


@contextmanager
def _no_outage_warning() -> Iterator[None]:
    """The engine's outage warning speaks for a running service ("answering 503"); a command
    ends with its own error line instead (_ExplainedErrors)."""
    # The Redis cache's, too ("serving without cache"): it only exists in Redis renders.
    logs = [
        logging.getLogger(f"{__package__}.db.engine"),
        logging.getLogger(f"{__package__}.cache_redis"),
    ]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from .db import migrate

    with _no_outage_warning():
        migrate.upgrade(get_settings().database.url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Revert migrations down to REVISION ("base" removes every table)."""
    from .db import migrate

    with _no_outage_warning():
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
        with _no_outage_warning():
            asyncio.run(_seed(users=users, projects=projects, items=items, random_seed=random_seed))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


async def _seed(**counts: int) -> None:
    from rich.progress import Progress, TaskID

    from .db.engine import create_engine
    from .db.seed import DEMO_PASSWORD, UNUSABLE_PASSWORD_HASH
    from .db.seed import seed as seed_database
    from .security import hash_password

    settings = get_settings()
    if settings.app.environment == "production":
        password_hash = UNUSABLE_PASSWORD_HASH
        typer.echo("production: seeded users get no password (they cannot sign in)")
    else:
        password_hash = hash_password(settings.auth, DEMO_PASSWORD)
        typer.echo(f"seeded users sign in as user<N> (or user<N>@example.com) / {DEMO_PASSWORD}")
    engine = create_engine(settings.database)
    try:
        with Progress() as progress:
            tasks: dict[str, TaskID] = {}

            def advance(table: str, done: int, total: int) -> None:
                if table not in tasks:
                    tasks[table] = progress.add_task(f"{table:<8}", total=total)
                progress.advance(tasks[table], done)

            await seed_database(engine, **counts, password_hash=password_hash, on_progress=advance)
    finally:
        await engine.dispose()
    if counts["projects"] or counts["items"]:
        invalidated, message = await _invalidate_project_pages(settings)
        if not invalidated:
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1)
        typer.echo(message)


async def _invalidate_project_pages(settings: Settings) -> tuple[bool, str]:
    """A running service caches project pages and their total (api/projects.py), and a seed
    changes both; project details keep their item counts (new items go to new projects).
    Whether a running service shows the new data, and what to tell the user."""
    from .cache import create_cache
    from .cache_keys import LIST_NAMESPACE

    cache = create_cache(settings)
    try:
        if not cache.shared:
            return True, (
                "cached project pages not invalidated: a running service's cache is in its own"
                " memory; its project pages show what they held before the seed for up to"
                f" {settings.cache.ttl_seconds} s (CACHE_TTL_SECONDS), or restart it"
            )
        if await cache.invalidate_namespace(LIST_NAMESPACE):
            return True, "cached project pages invalidated"
        return False, (
            "seeded, but Redis did not answer (start it, or fix REDIS_URL): a running service"
            f" may show its cached project pages for up to {settings.cache.ttl_seconds} s"
            " (CACHE_TTL_SECONDS), or restart it"
        )
    finally:
        await cache.close()
