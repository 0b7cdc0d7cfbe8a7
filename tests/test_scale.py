"""Scale-out: 3 replicas of the generated service (`serve`), nginx in front, PgBouncer in
transaction mode between them and PostgreSQL, Redis shared; all real processes this test starts,
with its own configuration files on free ports (never the system's services).

Under bounded load it checks: no failed request; PostgreSQL never sees more server connections
for the test's database than PgBouncer's pool; a write through one replica is read back through
the others; and a rolling restart (SIGTERM each replica in turn, start it again) under the same
load loses no request. The figures are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import (
    POSTGRES_DEFAULT_URL,
    REDIS_DEFAULT_URL,
    in_ci,
    project_env,
    run,
    run_ok,
)
from template_config import Combination, combinations, default_combination

SCALE = Combination(
    {**default_combination().answers, "database": "postgresql", "cache_backend": "redis"}
)
REPLICAS = 3
CLIENTS = 32
STEADY_SECONDS = 15
GRACEFUL_SECONDS = 10  # serve --graceful-timeout
PGBOUNCER_POOL = 8  # PostgreSQL server connections for the test's database, at most
REPLICA_POOL = (4, 4)  # DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW: 3 x 8 client connections
INSTALL = "apt-get install pgbouncer nginx-light (.ci/run installs them)"

# Run with the generated project's interpreter: the load through the balancer, and its figures.
LOAD_SCRIPT = Path(__file__).with_name("scale_load.py")

PGBOUNCER_INI = """\
[databases]
{database} = host={host} port={port} dbname={database} user={user}{password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {run_dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_db_connections = {pool}
max_client_conn = 500
"""

# The retry policy the test runs through the rolling restart; compose's nginx.conf has it too.
RETRY = "proxy_next_upstream error timeout http_502 http_503 http_504;"
NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {run_dir}/nginx-body;
    proxy_temp_path {run_dir}/nginx-proxy;
    fastcgi_temp_path {run_dir}/nginx-fastcgi;
    uwsgi_temp_path {run_dir}/nginx-uwsgi;
    scgi_temp_path {run_dir}/nginx-scgi;
    upstream replicas {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # A replica that refuses or drops a connection (stopping): the request goes to the
            # next one. nginx retries only idempotent methods so (no non_idempotent here).
            {retry}
            proxy_next_upstream_tries {replicas};
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def program(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} is not installed: {INSTALL}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on {port} after {timeout} s:\n{log.read_text()[-3000:]}")


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def send(method: str, url: str, body: dict, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return response.status, json.loads(response.read())


def sign_in(base: str, username: str) -> str:
    """An access token of a seeded user (the seed's demo password, outside production)."""
    form = urllib.parse.urlencode({"username": username, "password": "demo-password"}).encode()
    request = urllib.request.Request(f"{base}/api/v1/auth/token", data=form, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        token: str = json.loads(response.read())["access_token"]
    return token


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, grace: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after ``grace``; the exit status (None: it was killed)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                return None
        return self.popen.returncode


class Topology:
    """The processes of one test; each is stopped by its own pid at the end."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.processes: list[Process] = []

    def start(self, name: str, command: list[str], **kwargs) -> Process:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(  # noqa: S603
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace=10)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # World-readable: PgBouncer and nginx workers drop root privileges (to nobody) when run as root.
    path = Path(tempfile.mkdtemp(prefix="scale-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def admin_sql(admin_url: str, sql: str, project_dir: Path, env: dict[str, str]) -> None:
    script = (
        "import asyncio, sys, asyncpg\n"
        "async def main():\n"
        "    conn = await asyncpg.connect(sys.argv[1])\n"
        "    await conn.execute(sys.argv[2])\n"
        "    await conn.close()\n"
        "asyncio.run(main())\n"
    )
    run_ok([".venv/bin/python", "-c", script, admin_url, sql], project_dir, env)


class ScaleOut:
    """One run's topology: its database, PgBouncer, the replicas and nginx, each started by a
    step below and stopped (its database dropped, its Redis keys deleted) by ``close``."""

    def __init__(self, project, run_dir: Path) -> None:
        self.project = project
        self.run_dir = run_dir
        self.env = project_env(project.combo)
        self.admin_url = self.env.get("TEST_DATABASE_URL", POSTGRES_DEFAULT_URL)
        self.redis_url = self.env.get("TEST_REDIS_URL", REDIS_DEFAULT_URL)
        self.server = urlsplit(self.admin_url)
        self.run_id = secrets.token_hex(4)
        self.database = f"scale_{self.run_id}"
        self.cli = str(project.project_dir / ".venv" / "bin" / project.slug)
        self.topology = Topology(run_dir)
        self.as_root = os.geteuid() == 0
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.replicas: list[Process] = []
        self.balancer = ""

    @property
    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def create_database(self) -> None:
        """Migrations and seed data straight to PostgreSQL (they hold session state)."""
        admin_sql(
            self.admin_url, f'CREATE DATABASE "{self.database}"', self.project.project_dir, self.env
        )
        direct_url = self.server._replace(path=f"/{self.database}").geturl()
        direct = {**self.env, "DATABASE_URL": direct_url}
        run_ok([self.cli, "db", "upgrade"], self.project.project_dir, direct)
        run_ok(
            [self.cli, "seed", "--users", "50", "--projects", "400", "--items", "400"],
            self.project.project_dir,
            direct,
            timeout=300,
        )

    def start_pgbouncer(self) -> str:
        """PgBouncer in transaction mode; the URL the replicas connect to."""
        server, port = self.server, free_port()
        user = server.username or "postgres"
        password = f" password={server.password}" if server.password else ""
        (self.run_dir / "pgbouncer.ini").write_text(
            PGBOUNCER_INI.format(
                database=self.database,
                host=server.hostname or "127.0.0.1",
                port=server.port or 5432,
                user=user,
                password=password,
                listen_port=port,
                run_dir=self.run_dir,
                pool=PGBOUNCER_POOL,
            )
        )
        (self.run_dir / "userlist.txt").write_text(f'"{user}" ""\n')
        command = [program("pgbouncer"), *(["-u", "nobody"] if self.as_root else [])]
        pgbouncer = self.topology.start("pgbouncer", [*command, "pgbouncer.ini"], cwd=self.run_dir)
        wait_for_port(port, pgbouncer.popen, pgbouncer.log)
        return f"postgresql://{user}@127.0.0.1:{port}/{self.database}"

    def configure_replicas(self, pooled_url: str) -> None:
        """serve, configured as the Kubernetes ConfigMap configures a pod."""
        self.replica_env = {
            **self.env,
            "APP_ENVIRONMENT": "production",
            "APP_SECRET_KEY": secrets.token_urlsafe(32),
            "APP_LOG_LEVEL": "WARNING",
            "APP_UPLOAD_DIR": str(self.run_dir / "uploads"),
            "DATABASE_URL": pooled_url,
            "DATABASE_POOLER": "pgbouncer",
            "DATABASE_POOL_SIZE": str(REPLICA_POOL[0]),
            "DATABASE_MAX_OVERFLOW": str(REPLICA_POOL[1]),
            "REDIS_URL": self.redis_url,
            "CACHE_KEY_PREFIX": f"scale-{self.run_id}:",
            "RATE_LIMIT_KEY_PREFIX": f"scale-{self.run_id}-limits",
            # nginx adds the client's address to X-Forwarded-For. The load comes from one
            # address, far beyond any sane per-client limit: the limits are counted, not hit.
            "RATE_LIMIT_TRUSTED_PROXY_HOPS": "1",
            "RATE_LIMIT_DEFAULT": "100000000/minute",
        }

    def start_replica(self, index: int) -> Process:
        port = self.ports[index]
        command = [self.cli, "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--graceful-timeout", str(GRACEFUL_SECONDS)]
        process = self.topology.start(
            f"replica-{index}", command, cwd=self.project.project_dir, env=self.replica_env
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                pytest.fail(f"replica {index} exited:\n{process.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if get(f"http://127.0.0.1:{port}/health/ready", 2)[0] == 200:
                    return process
            time.sleep(0.2)
        pytest.fail(f"replica {index} not ready in 60 s:\n{process.log.read_text()[-3000:]}")

    def start_nginx(self) -> None:
        listen_port = free_port()
        (self.run_dir / "nginx.conf").write_text(
            NGINX_CONF.format(
                user="user nobody nogroup;" if self.as_root else "",
                run_dir=self.run_dir,
                servers="\n".join(
                    f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;"
                    for port in self.ports
                ),
                listen_port=listen_port,
                replicas=REPLICAS,
                retry=RETRY,
            )
        )
        command = [
            program("nginx"),
            "-p",
            str(self.run_dir),
            "-c",
            str(self.run_dir / "nginx.conf"),
        ]
        nginx = self.topology.start("nginx", command)
        wait_for_port(listen_port, nginx.popen, nginx.log)
        self.balancer = f"http://127.0.0.1:{listen_port}"

    def load(self, duration: float, stop_file: Path | None = None) -> subprocess.Popen:
        return subprocess.Popen(  # noqa: S603
            [".venv/bin/python", str(LOAD_SCRIPT), self.balancer, self.admin_url, self.database]
            + [str(CLIENTS), str(duration), str(stop_file or self.run_dir / "never")],
            cwd=self.project.project_dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        self.topology.stop_all()
        with contextlib.suppress(pytest.fail.Exception):
            admin_sql(
                self.admin_url,
                f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)',
                self.project.project_dir,
                self.env,
            )
        run(
            [
                ".venv/bin/python",
                "-c",
                "import sys, redis; r = redis.Redis.from_url(sys.argv[1]); "
                "keys = list(r.scan_iter(match=sys.argv[2] + '*')); keys and r.delete(*keys)",
                self.redis_url,
                f"scale-{self.run_id}",  # the cache's keys and the rate limits'
            ],
            self.project.project_dir,
            self.env,
        )


def load_figures(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=660)
    assert process.returncode == 0, err
    return json.loads(out)


def start_topology(scale: ScaleOut) -> None:
    scale.create_database()
    scale.configure_replicas(scale.start_pgbouncer())
    scale.replicas = [scale.start_replica(index) for index in range(REPLICAS)]
    scale.start_nginx()
    assert get(f"{scale.balancer}/health/ready")[0] == 200


def write_through_one_read_through_the_others(scale: ScaleOut) -> None:
    """A write through one replica, read back through the others (each had it cached)."""
    urls, run_id = scale.replica_urls, scale.run_id
    for url in urls:
        assert get(f"{url}/api/v1/projects/7")[0] == 200
    new_name = f"renamed {run_id}"
    # Only the owner writes: sign in as the seeded owner of project 7 (user<id>).
    owner_id = json.loads(get(f"{urls[0]}/api/v1/projects/7")[1])["owner"]["id"]
    token = sign_in(urls[2], f"user{owner_id}")
    status, written = send("PATCH", f"{urls[0]}/api/v1/projects/7", {"name": new_name}, token)
    assert (status, written["name"]) == (200, new_name)
    for url in urls[1:]:
        status, body = get(f"{url}/api/v1/projects/7")
        assert (status, json.loads(body)["name"]) == (200, new_name), url
    status, created = send("POST", f"{urls[1]}/api/v1/projects", {"name": f"new {run_id}"}, token)
    assert status == 201
    for url in (urls[0], urls[2]):
        status, body = get(f"{url}/api/v1/projects/{created['id']}")
        assert (status, json.loads(body)) == (200, created), url


def export_through_each_replica(scale: ScaleOut) -> None:
    """An export through each replica under load: its COPY and that COPY's settings share one
    transaction, so PgBouncer's transaction pooling keeps them on one server connection."""
    exports = [get(f"{url}/api/v1/items/export", timeout=30) for url in scale.replica_urls]
    assert {status for status, _ in exports} == {200}
    assert len({body for _, body in exports}) == 1
    ids = [json.loads(line)["id"] for line in exports[0][1].splitlines()]
    assert ids
    assert ids == sorted(set(ids))  # every row once, in order


def rolling_restart(scale: ScaleOut) -> tuple[dict, list[float], int]:
    """SIGTERM each replica in turn and start it again, under load until the last is back: the
    load's figures, each replica's seconds from SIGTERM to exit, and how many requests nginx
    passed on to another replica (refused connects, connections closed under it)."""
    stop_file = scale.run_dir / "stop-load"
    rolling = scale.load(600, stop_file)  # until the stop file: every restart under load
    time.sleep(3)
    stops = []
    for index in range(REPLICAS):
        started = time.monotonic()
        code = scale.replicas[index].stop(grace=GRACEFUL_SECONDS + 5)
        stops.append(time.monotonic() - started)
        assert code == 0, f"replica {index} exited {code} on SIGTERM"
        scale.replicas[index] = scale.start_replica(index)
        time.sleep(2)
    assert rolling.poll() is None, "the load ended before the last restart"
    stop_file.touch()
    restart = load_figures(rolling)
    retried = (scale.run_dir / "nginx-error.log").read_text().count("upstream")
    return restart, stops, retried


def print_figures(
    steady: dict, restart: dict, stops: list[float], retried: int, capsys: pytest.CaptureFixture
) -> None:
    with capsys.disabled():
        print(f"\nscale-out ({REPLICAS} replicas, nginx, PgBouncer pool {PGBOUNCER_POOL}):")
        for name, figures in (("steady", steady), ("rolling restart", restart)):
            print(
                f"  {name}: {figures['requests']:,} requests in {figures['seconds']:.1f} s "
                f"({figures['rps']:,.0f} req/s, p50 {figures['p50_ms']:.1f} ms, "
                f"p99 {figures['p99_ms']:.1f} ms), {figures['failed']} failed, "
                f"PostgreSQL server connections max {figures['max_server_connections']} "
                f"({figures['samples']} samples)"
            )
        print(f"  SIGTERM to exit per replica: {', '.join(f'{s:.1f} s' for s in stops)}")
        print(f"  nginx error-log lines about an upstream (each retried): {retried}")
        print(f"  load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def test_replicas_behind_nginx_and_pgbouncer_survive_load_and_a_rolling_restart(
    synced, servers, run_dir, capsys
) -> None:
    project = synced(SCALE)
    servers.require(project.combo)
    for name in ("pgbouncer", "nginx"):
        program(name)  # skipped (failed in CI) before anything starts
    scale = ScaleOut(project, run_dir)
    try:
        start_topology(scale)
        steady_load = scale.load(STEADY_SECONDS)
        export_through_each_replica(scale)
        steady = load_figures(steady_load)
        write_through_one_read_through_the_others(scale)
        restart, stops, retried = rolling_restart(scale)
    finally:
        scale.close()

    print_figures(steady, restart, stops, retried, capsys)
    for name, figures in (("steady", steady), ("rolling restart", restart)):
        assert figures["failed"] == 0, f"{name}: {figures['failures']}"
        assert set(figures["statuses"]) == {"200"}, name
        assert figures["samples"] > 10, name
        assert 0 < figures["max_server_connections"] <= PGBOUNCER_POOL, name
    assert all(seconds < GRACEFUL_SECONDS + 5 for seconds in stops)


class _ComposeLoader(yaml.SafeLoader):
    """compose's `!reset` (drop what the base file set) as a marker."""


_ComposeLoader.add_constructor(
    "!reset", lambda loader, node: {"!reset": loader.construct_sequence(node)}
)
POSTGRESQL = [combo for combo in combinations() if combo.database == "postgresql"]


def host_of(url: str) -> str | None:
    """The host of a compose URL, with its ${VARIABLE...} interpolations filled in."""
    return urlsplit(re.sub(r"\$\{[^}]*\}", "x", url)).hostname


@pytest.mark.parametrize("combo", POSTGRESQL, ids=[combo.id for combo in POSTGRESQL])
def test_compose_scale_override_runs_the_same_topology(render, combo) -> None:
    project = render(combo)
    root = project.project_dir
    base = yaml.safe_load((root / "compose.yaml").read_text())
    scale = yaml.load((root / "compose.scale.yaml").read_text(), Loader=_ComposeLoader)  # noqa: S506
    services = scale["services"]
    # With Redis, the job workers are scaled and pooled the same way.
    workers = {"worker"} if combo.cache_backend == "redis" else set()
    assert set(services) == {"pgbouncer", "app", "balancer", *workers}
    assert set(services) - {"app", *workers} <= set(services) - set(base["services"])

    pgbouncer = services["pgbouncer"]["environment"]
    assert pgbouncer["POOL_MODE"] == "transaction"
    assert host_of(pgbouncer["DATABASE_URL"]) == "db"
    app = services["app"]
    assert app["ports"] == {"!reset": []}  # only the balancer publishes a port
    replicas = app["deploy"]["replicas"]
    assert replicas >= 2
    env = app["environment"]
    assert host_of(env["DATABASE_URL"]) == "pgbouncer"
    assert env["DATABASE_POOLER"] == "pgbouncer"
    per_replica = int(env["DATABASE_POOL_SIZE"]) + int(env["DATABASE_MAX_OVERFLOW"])
    clients = replicas * per_replica * int(env["WEB_CONCURRENCY"])
    if workers:
        worker = services["worker"]
        assert host_of(worker["environment"]["DATABASE_URL"]) == "pgbouncer"
        assert worker["environment"]["DATABASE_POOLER"] == "pgbouncer"
        pool = base["services"]["worker"]["environment"]  # its own pool, from compose.yaml
        per_worker = int(pool["DATABASE_POOL_SIZE"]) + int(pool["DATABASE_MAX_OVERFLOW"])
        clients += worker["deploy"]["replicas"] * per_worker
    assert clients <= int(pgbouncer["MAX_CLIENT_CONN"])
    # Migrations keep compose.yaml's direct URL: they hold session locks.
    assert "migrate" not in services
    migrate = base["services"]["migrate"].get("environment") or base["x-app"]["environment"]
    assert host_of(migrate["DATABASE_URL"]) == "db"

    balancer = services["balancer"]
    assert balancer["ports"] == ["8000:80"]
    [mount] = balancer["volumes"]
    conf = root / mount.split(":")[0]
    text = conf.read_text()
    assert RETRY in text, "compose's nginx retries what the scale-out test retries"
    # The replicas take the client's address from the entry nginx adds (one trusted hop).
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in text
    assert env["RATE_LIMIT_TRUSTED_PROXY_HOPS"] == "1"
    assert "server app:8000" in text
    assert "non_idempotent" not in text
