"""Figure 9: what PgBouncer (transaction mode, DATABASE_POOLER=pgbouncer) costs an uncached page.

Three servers side by side on the bench database: the service as usual (direct, asyncpg's
statement cache on), the same with DATABASE_POOLER=pgbouncer but still direct (the cost of
parsing every statement again), and through a PgBouncer this figure starts on a free port (that
cost plus the extra hop).
"""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_service_bench import servers as bench_servers
from sqlalchemy.engine import make_url

from .harness import Bench, Load
from .report import Figure

PATH = "/api/v1/projects/cursor?limit=20"
POOL_SIZE = 20
PGBOUNCER_INI = """\
[databases]
{name} = host={host} port={port} dbname={name} user={user}{password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
"""


def pgbouncer_binary() -> str:
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")


@contextlib.contextmanager
def pgbouncer(database_url: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of ``database_url``; yields its URL."""
    binary = pgbouncer_binary()
    url = make_url(database_url)
    user = url.username or "postgres"
    with socket.socket() as sock:
        sock.bind((bench_servers.HOST, 0))
        port = int(sock.getsockname()[1])
    directory = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    try:
        (directory / "pgbouncer.ini").write_text(
            PGBOUNCER_INI.format(
                name=url.database,
                host=url.host or "127.0.0.1",
                port=url.port or 5432,
                user=user,
                password=f" password={url.password}" if url.password else "",
                listen_port=port,
                directory=directory,
                pool_size=POOL_SIZE,
            )
        )
        # PgBouncer trusts its clients here (127.0.0.1); it logs in to PostgreSQL as DATABASE_URL.
        (directory / "userlist.txt").write_text(f'"{user}" ""\n')
        # PgBouncer refuses to run as root; -u drops to an unprivileged user.
        command = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), "pgbouncer.ini"]
        with (directory / "pgbouncer.log").open("wb") as log:
            process = subprocess.Popen(  # noqa: S603 - the installed pgbouncer, our own config
                command, cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            _wait_for_port(port, process, directory / "pgbouncer.log")
            yield url.set(host=bench_servers.HOST, port=port, password=None).render_as_string(
                hide_password=False
            )
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            if process.poll() is None:
                process.kill()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited {process.returncode}: {log.read_text()[-500:]}")
        with contextlib.suppress(OSError), socket.create_connection((bench_servers.HOST, port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"pgbouncer did not listen on {port} in 10 s")


def pooler(bench: Bench) -> list[Figure]:
    if bench.database.backend != "postgresql":
        bench.log("  n/a: PgBouncer is for PostgreSQL")
        return []
    with pgbouncer(bench.database.url) as pooled_url:
        variants = {
            "no_statement_cache": {"DATABASE_POOLER": "pgbouncer"},
            "pgbouncer": {"DATABASE_POOLER": "pgbouncer", "DATABASE_URL": pooled_url},
        }
        started = [
            bench_servers.start(
                name,
                f"{__package__}.apps:full_app",
                {**bench.server_env, **env},
                bench.log_dir,
                bench.server_pin,
            )
            for name, env in variants.items()
        ]
        try:
            bench_servers.wait_ready(started)
            bench.servers.update({server.name: server for server in started})
            for name in ("full", *variants):  # connections opened, statements seen once
                for _ in range(5):
                    bench.get(name, PATH)
            direct, uncached, pooled = bench.compare(
                Load("9: direct", "full", PATH),
                Load("9: direct, DATABASE_POOLER=pgbouncer", "no_statement_cache", PATH),
                Load("9: through PgBouncer", "pgbouncer", PATH),
            )
        finally:
            for server in started:
                bench.servers.pop(server.name, None)
                bench_servers.stop(server)
    detail = (
        f"{pooled.rps:,.0f} through PgBouncer vs {direct.rps:,.0f} direct req/s "
        f"({uncached.rps:,.0f} direct without the statement cache); p99 "
        f"{pooled.p99_ms:.1f} vs {direct.p99_ms:.1f} ms"
    )
    return [
        Figure(
            9,
            "uncached keyset page through PgBouncer vs direct (req/s)",
            pooled.rps / direct.rps,
            detail=detail,
        ),
        Figure(
            9,
            "uncached keyset page, statement cache off vs on, direct (req/s)",
            uncached.rps / direct.rps,
            detail="DATABASE_POOLER=pgbouncer without PgBouncer: the cost of re-parsing",
        ),
    ]
