"""Schemathesis (every phase, stateful included) against a served generated service, for the
default and the PostgreSQL + Redis combinations: no server error, every response as its OpenAPI
says (status, content type, headers, body schema). The upstream-dependent route (/api/v1/rates) is
run with a local upstream up, then down.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest

from conftest import POSTGRES_DEFAULT_URL, project_env, run, run_ok
from template_config import Combination, default_combination
from test_generated import _free_port, _get, _stop_group

POSTGRES_REDIS = Combination(
    {**default_combination().answers, "database": "postgresql", "cache_backend": "redis"}
)
COMBOS = [default_combination(), POSTGRES_REDIS]
ST = str(Path(sys.executable).with_name("st"))
# Bounded: a few minutes for both combinations on a loaded 2-core machine.
MAX_EXAMPLES = "10"
# Every check runs; operations that answer a schema-valid request with 422 by design say so there.
CONFIG = Path(__file__).with_name("schemathesis.toml")

# Run inside the generated project (its own asyncpg / redis).
ADMIN = """
import asyncio, sys
async def main(kind, url, argument):
    if kind == "sql":
        import asyncpg
        conn = await asyncpg.connect(url)
        await conn.execute(argument)
        await conn.close()
    else:
        from redis.asyncio import Redis
        redis = Redis.from_url(url)
        keys = [key async for key in redis.scan_iter(match=argument + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
asyncio.run(main(*sys.argv[1:]))
"""


class _Rates(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        base = parse_qs(urlsplit(self.path).query).get("base", ["EUR"])[0]
        body = json.dumps({"base": base, "rates": {"USD": 1.08, "JPY": 161.2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@contextmanager
def upstream() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rates)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def served(project_dir: Path, slug: str, env: dict[str, str], log_path: Path) -> Iterator[str]:
    port = _free_port()
    with log_path.open("w") as log:
        server = subprocess.Popen(
            ["uv", "run", slug, "serve", "--port", str(port)],
            cwd=project_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"serve exited {server.returncode}:\n{log_path.read_text()}")
            try:
                _get(f"{base}/health/live")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer on {base}:\n{log_path.read_text()}", pytrace=False)
                time.sleep(0.5)
        yield base
    finally:
        _stop_group(server)


def access_token(base: str) -> str:
    """Sign in as a seeded user (the seed's demo password, outside production)."""
    form = urllib.parse.urlencode({"username": "user1", "password": "demo-password"}).encode()
    request = urllib.request.Request(f"{base}/api/v1/auth/token", data=form, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own server
        token: str = json.loads(response.read())["access_token"]
    return token


def schemathesis(base: str, cwd: Path, *options: str) -> str:
    result = run(
        [
            ST,
            f"--config-file={CONFIG}",
            "run",
            f"{base}/openapi.json",
            "--phases=examples,coverage,fuzzing,stateful",
            f"--max-examples={MAX_EXAMPLES}",
            "--checks=all",
            "--generation-database=none",
            "--seed=12",
            "--workers=1",
            "--request-timeout=30",
            "--no-color",
            *options,
        ],
        cwd,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout
    return result.stdout


@pytest.mark.parametrize("combo", COMBOS, ids=[combo.id for combo in COMBOS])
def test_schemathesis_finds_no_failure(
    combo: Combination, synced, servers, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    project = synced(combo)
    servers.require(project.combo)
    python = str(project.project_dir / ".venv" / "bin" / "python")
    run_id = secrets.token_hex(4)
    prefix = f"st-{run_id}:"
    if combo.database == "postgresql":
        admin_url = project_env(combo).get("TEST_DATABASE_URL", POSTGRES_DEFAULT_URL)
        name = f"st_{run_id}"
        database_url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
        run_ok([python, "-c", ADMIN, "sql", admin_url, f'CREATE DATABASE "{name}"'], tmp_path)
        request.addfinalizer(
            lambda: run(
                [
                    python,
                    "-c",
                    ADMIN,
                    "sql",
                    admin_url,
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                ],
                tmp_path,
            )
        )
    else:
        database_url = f"sqlite:///{tmp_path / 'service.db'}"
    if combo.cache_backend == "redis":
        redis_url = project_env(combo).get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
        request.addfinalizer(
            # The cache's keys and the rate limits' (``st-<id>-limits...``) alike.
            lambda: run([python, "-c", ADMIN, "redis", redis_url, prefix.rstrip(":")], tmp_path)
        )
    with upstream() as rates:
        env = {
            key: value
            for key, value in project_env(project.combo).items()
            if not key.startswith(("APP_", "AUTH_", "DATABASE_", "CACHE_", "HTTP_", "PROMETHEUS_"))
        }
        env.update(
            APP_ENVIRONMENT="test",
            APP_UPLOAD_DIR=str(tmp_path / "uploads"),
            APP_SLOW_REQUEST_MS="60000",
            DATABASE_URL=database_url,
            CACHE_KEY_PREFIX=prefix,
            # The run is signed in with one token: it must outlive the run.
            AUTH_ACCESS_TOKEN_SECONDS="7200",
            HTTP_UPSTREAM_URL=f"http://127.0.0.1:{rates.server_address[1]}",
        )
        if combo.cache_backend == "redis":
            # Counters of its own: the default prefix is shared with every other service on this
            # Redis, whose sign-ins from 127.0.0.1 would count against this run's.
            env.update(REDIS_URL=redis_url, RATE_LIMIT_KEY_PREFIX=f"st-{run_id}-limits")
        run_ok(["uv", "run", project.slug, "db", "upgrade"], project.project_dir, env)
        seed = ["seed", "--users", "5", "--projects", "20", "--items", "50"]
        run_ok(["uv", "run", project.slug, *seed], project.project_dir, env)
        log_path = tmp_path / "serve.log"
        with served(project.project_dir, project.slug, env, log_path) as base:
            assert _get(f"{base}/api/v1/rates?base=USD")[0] == 200
            # Signed in: the routes that need a caller are exercised, and the ignored_auth
            # check probes each without the token and with a wrong one.
            schemathesis(base, tmp_path, f"--header=Authorization: Bearer {access_token(base)}")

            rates.shutdown()  # the upstream goes away: 502, documented
            rates.server_close()
            status, body = _get(f"{base}/api/v1/rates?base=GBP")
            assert status == 502, body
            # 502 is the answer now: a 5xx by design, so only its documentation is checked.
            schemathesis(
                base,
                tmp_path,
                "--include-path=/api/v1/rates",
                "--exclude-checks=not_a_server_error",
            )
        log = log_path.read_text()
        assert "Traceback" not in log, log[-5000:]
