"""One bench run: seed a fresh database, start the servers, measure every figure, report."""

import asyncio
import datetime
import os
import platform
import secrets
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import typer
from bench_service.db import migrate
from bench_service.db.engine import create_engine
from bench_service.settings import DatabaseSettings, Settings, get_settings
from bench_service_bench import servers as bench_servers
from bench_service_bench.driver import load_generator
from rich.progress import Progress, TaskID
from sqlalchemy import text

from .cache_keys import delete_bench_keys
from .data import BenchDatabase, create_database, drop_database, seed_bench
from .harness import Bench, BenchConfig
from .report import Report
from .runner import run_figures

APPS = f"{__package__}.apps"
# name -> app factory in bench/apps.py
SERVERS = {
    "full": "full_app",
    "bare": "bare_app",
    "pure": "pure_timing_app",
    "base_http": "base_http_timing_app",
    # The service as deployed, with list page 1 cached: figure 1's cached page.
    "cached": "full_app",
}
# With Redis, the same service on the memory backend, list pages cached: figure 1 compares hits.
REDIS_ONLY_SERVERS = {"memory": "memory_cache_app"}
# Settings of one server that differ from _server_env's.
SERVER_ENV = {
    "cached": {"CACHE_CACHED_LIST_PAGES": "1"},
    "memory": {"CACHE_CACHED_LIST_PAGES": "1"},
}


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def _pins() -> tuple[list[str], list[str], str]:
    """The service's own pinning, and this process on the clients' core: it reads the exports."""
    server, client, description = bench_servers.core_pins()
    if client:
        os.sched_setaffinity(0, {int(client[-1])})
        description = description.replace("load generator", "load generator and bench")
    return server, client, description


async def _seed(database: BenchDatabase, config: BenchConfig) -> str:
    engine = create_engine(DatabaseSettings(url=database.url, slow_query_ms=60_000))
    try:
        with Progress(transient=False) as progress:
            tasks: dict[str, TaskID] = {}

            def advance(table: str, done: int, total: int) -> None:
                if table not in tasks:
                    tasks[table] = progress.add_task(f"seed {table:<8}", total=total)
                progress.advance(tasks[table], done)

            await seed_bench(
                engine,
                users=config.users,
                projects=config.projects,
                items=config.items,
                on_progress=advance,
            )
        async with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                return f"SQLite {await conn.scalar(text('SELECT sqlite_version()'))}"
            version = str(await conn.scalar(text("SHOW server_version")))
            return f"PostgreSQL {version.split()[0]}"
    finally:
        await engine.dispose()


def _limits_prefix(prefix: str) -> str:
    # The rate limits' keys: never under the cache's prefix (the service refuses that).
    return prefix.removesuffix(":") + "-limits:"


def _server_env(
    settings: Settings, database: BenchDatabase, prefix: str, secret: str
) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database.url,
        "DATABASE_POOL_SIZE": "30",
        "DATABASE_MAX_OVERFLOW": "0",
        "DATABASE_SLOW_QUERY_MS": "60000",
        "APP_SLOW_REQUEST_MS": "60000",
        # The service's defaults, as deployed: an access log line per request, in JSON.
        "APP_LOG_LEVEL": "INFO",
        "APP_LOG_FORMAT": "json",
        "APP_SECRET_KEY": secret,
        "CACHE_KEY_PREFIX": prefix,
        # List pages uncached: the list figures measure the database path, figure 1 the cache.
        "CACHE_CACHED_LIST_PAGES": "0",
        "CACHE_TTL_SECONDS": "3600",
        # One client address: every request is counted by the rate limit, none refused.
        "RATE_LIMIT_DEFAULT": "1000000000/minute",
        "RATE_LIMIT_KEY_PREFIX": _limits_prefix(prefix),
    }


def _load_average() -> str:
    return " ".join(f"{n:.2f}" for n in os.getloadavg())


def _machine(
    database: str, settings: Settings, load: str, pinning: str, note: str, load_at_start: str
) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    meminfo = Path("/proc/meminfo")
    memory = "?"
    if meminfo.exists():
        kib = int(meminfo.read_text().split("\n", 1)[0].split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    machine = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "database": database,
        "cache": "Redis" if hasattr(settings, "redis") else "in-process memory",
        "server": "uvicorn, 1 worker, uvloop + httptools",
        "pinning": pinning,
        "load generator": load,
        "load average at start": load_at_start,
    }
    if note:
        machine["note"] = note
    return machine


def run_bench(
    *,
    quick: bool,
    users: int | None,
    projects: int | None,
    items: int | None,
    duration: float | None,
    connections: int,
    rounds: int | None,
    output: Path,
    generator: str,
    check: bool,
    note: str,
    only: Collection[int] = (),
) -> int:
    """The whole run; returns the exit code (1 when a figure has no value, or with ``check``
    when a target is missed)."""
    config = BenchConfig(
        users=users or (100 if quick else 10_000),
        projects=projects or (2_000 if quick else 100_000),
        items=items or (20_000 if quick else 1_000_000),
        duration=duration or (1.0 if quick else 2.0),
        warmup=0.0 if quick else 1.0,
        connections=connections,
        rounds=rounds or (1 if quick else 5),
    )
    started = time.perf_counter()
    load_at_start = _load_average()
    settings = get_settings()
    run_id = secrets.token_hex(4)
    prefix = f"bench-{run_id}:"
    secret = secrets.token_urlsafe(32)
    output.mkdir(parents=True, exist_ok=True)
    server_pin, client_pin, pinning = _pins()
    load = load_generator(generator, client_pin)
    _echo(f"bench {run_id}: load from {load.describe()}; {pinning}")

    database = asyncio.run(create_database(settings.database.url, run_id, output.resolve()))
    running: dict[str, bench_servers.Server] = {}
    try:
        _echo(f"database {database.name}: migrating and seeding")
        migrate.upgrade(database.url)
        seed_started = time.perf_counter()
        database_version = asyncio.run(_seed(database, config))
        seed_seconds = time.perf_counter() - seed_started
        env = _server_env(settings, database, prefix, secret)
        servers = SERVERS | (REDIS_ONLY_SERVERS if "redis" in Settings.model_fields else {})
        for name, factory in servers.items():
            server_env = {**env, **SERVER_ENV.get(name, {})}
            running[name] = bench_servers.start(
                name, f"{APPS}:{factory}", server_env, output, server_pin
            )
        bench_servers.wait_ready(list(running.values()))
        runner = Bench(
            config=config,
            load=load,
            servers=running,
            database=database,
            secret_key=secret,
            client_pin=client_pin,
            log=_echo,
            server_env=env,
            log_dir=output,
            server_pin=server_pin,
        )
        figures = run_figures(runner, only)
        runner.http.close()
    finally:
        for server in running.values():
            bench_servers.stop(server)
        drop_database(settings.database.url, database)
        asyncio.run(delete_bench_keys(settings, prefix))
        asyncio.run(delete_bench_keys(settings, _limits_prefix(prefix)))

    report = Report(
        figures=figures,
        machine=_machine(database_version, settings, load.describe(), pinning, note, load_at_start),
        config={
            "users": config.users,
            "projects": config.projects,
            "items": config.items,
            "seconds per measurement": config.duration,
            "warmup seconds": config.warmup,
            "connections": config.connections,
            "rounds (best counts)": config.rounds,
            "seed seconds": round(seed_seconds, 1),
            "total seconds": round(time.perf_counter() - started, 1),
        },
        raw=runner.raw,
    )
    report.machine["load average at end"] = _load_average()
    paths = report.write(output)
    for server in running.values():
        if server.log_path.stat().st_size == 0:
            server.log_path.unlink()  # keep only the logs that say something
    typer.echo(f"Load generator: {load.describe()}; {pinning}\n")
    typer.echo(report.markdown())
    _echo("wrote " + ", ".join(str(path) for path in paths.values()))
    if any(figure.value is None for figure in figures):
        return 1
    if check and any(figure.passed is False for figure in figures):
        return 1
    return 0
