"""The bench's harness: its configuration, the servers and client of one run (``Bench``), and
what a load is; the figures (runner.py, pooler.py, redis_restart.py) are built on it."""

import asyncio
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from bench_service.security import create_access_token
from bench_service.settings import AppSettings, Settings
from bench_service_bench.driver import LoadGenerator
from bench_service_bench.load import LoadResult, Response, Spec, read_response
from bench_service_bench.servers import HOST, Server
from pydantic import SecretStr

from .data import BenchDatabase

QUERIES = re.compile(r"queries=(\d+)")


@dataclass(frozen=True)
class BenchConfig:
    users: int
    projects: int
    items: int
    duration: float  # seconds of measured load per endpoint
    warmup: float  # seconds of unmeasured load before each first round
    connections: int  # concurrent connections for throughput measurements
    pool_clients: int = 200
    stampede_clients: int = 100
    list_page_size: int = 50
    deep_page_size: int = 10
    max_depth: int = 10_000
    rounds: int = 1  # interleaved repetitions of each comparison; the best round counts

    @property
    def depth(self) -> int:
        """The deep page: 10,000 pages of 10 in, or the last page of a smaller data set."""
        return max(2, min(self.max_depth, self.projects // self.deep_page_size))


@dataclass
class Bench:
    config: BenchConfig
    load: LoadGenerator
    servers: dict[str, Server]
    database: BenchDatabase
    secret_key: str
    client_pin: list[str]
    log: Callable[[str], None]
    # How the session started its servers, for a figure that starts its own (figure 9).
    server_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = Path()
    server_pin: list[str] = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(trust_env=False, timeout=60))
    raw: dict[str, Any] = field(default_factory=dict)

    def token_for(self, user_id: int) -> str:
        """An access token the session's servers accept (their APP_SECRET_KEY, default issuer
        and audience): writes need their owner's."""
        app = AppSettings(environment="test", secret_key=SecretStr(self.secret_key))
        return create_access_token(Settings(app=app), user_id)

    def get(self, server: str, path: str, **headers: str) -> httpx.Response:
        response = self.http.get(self.servers[server].url(path), headers=headers)
        if response.status_code != 200:
            raise RuntimeError(
                f"GET {path} on {server}: {response.status_code} {response.text[:300]}"
            )
        return response

    def compare(self, *loads: "Load") -> list[LoadResult]:
        """Measure each load ``rounds`` times, interleaved (A B A B ...), and keep each one's best
        round: on a shared machine that is the round other work disturbed least."""
        best: dict[str, LoadResult] = {}
        for round_number in range(self.config.rounds):
            for load in loads:
                server = self.servers[load.server]
                spec = Spec(
                    HOST,
                    server.port,
                    load.path,
                    connections=load.connections or self.config.connections,
                    duration=self.config.duration,
                    headers=load.headers,
                )
                if round_number == 0 and self.config.warmup > 0:
                    self.load.timed(replace(spec, duration=self.config.warmup))
                cpu_before = server.cpu_seconds()
                result = self.load.timed(spec)
                # CPU per request barely moves when other work shares the core; req/s does.
                cpu = server.cpu_seconds() - cpu_before
                result = replace(result, server_cpu_us=cpu / max(1, result.requests) * 1e6)
                entry = self.raw.setdefault(
                    load.key,
                    {
                        "server": load.server,
                        "path": load.path,
                        "headers": load.headers,
                        "rounds": [],
                    },
                )
                entry["rounds"].append(asdict(result))
                if load.key not in best or result.rps > best[load.key].rps:
                    best[load.key] = result
        for load in loads:
            result = best[load.key]
            if result.requests == 0:
                raise RuntimeError(
                    f"{load.key}: no request completed in {self.config.duration} s; "
                    "give it more time with --duration"
                )
            self.raw[load.key]["best"] = asdict(result)
            self.log(
                f"  {load.key}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms, "
                f"server CPU {result.server_cpu_us:,.0f} us/request, {result.errors} errors"
            )
        return [best[load.key] for load in loads]


@dataclass(frozen=True)
class Load:
    key: str  # names the measurement in the JSON
    server: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    connections: int | None = None


def statements_of(response: httpx.Response) -> int:
    match = QUERIES.search(response.headers.get("server-timing", ""))
    if match is None:
        raise RuntimeError("no queries= in the Server-Timing header")
    return int(match.group(1))


async def burst(port: int, path: str, clients: int) -> dict[str, list[int]]:
    """Open ``clients`` connections first, then send one GET on each at once, as a stampede
    arrives: every response's status and its statement count (``Server-Timing``; -1: none)."""
    connections = await asyncio.gather(
        *(asyncio.open_connection(HOST, port) for _ in range(clients))
    )
    request = Spec(HOST, port, path).request()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Response:
        writer.write(request)
        return await read_response(reader)

    try:
        responses = await asyncio.gather(*(one(reader, writer) for reader, writer in connections))
    finally:
        for _, writer in connections:
            writer.close()
    queries = []
    for response in responses:
        match = QUERIES.search(response.headers.get(b"server-timing", b"").decode())
        queries.append(int(match.group(1)) if match else -1)
    return {"statuses": [response.status for response in responses], "queries": queries}
