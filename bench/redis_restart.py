"""Figure 11: Redis killed and restarted under a steady stream of reads. How long after Redis
answers again until the service serves cache hits again, and how many requests failed while it
was down (the cache fails open: none should).

The figure owns its redis-server (on a free port) and its app server: the shared Redis of the
other figures is never touched.
"""

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from bench_service.settings import Settings
from bench_service_bench import servers as bench_servers

from .harness import Bench, statements_of
from .report import Figure

# Seconds of reads with Redis gone, before it is started again.
DOWN_SECONDS = 1.0
GIVE_UP_SECONDS = 30.0


class _RedisServer:
    def __init__(self, log_dir: Path) -> None:
        self.port = bench_servers.free_port()
        self.log_path = log_dir / "redis-restart.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{bench_servers.HOST}:{self.port}/0"

    def start(self) -> float:
        """Start redis-server; returns the moment it first answered PING."""
        binary = shutil.which("redis-server")
        assert binary is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - Debian's redis-server
                [binary, "--port", str(self.port), "--bind", bench_servers.HOST]
                + ["--save", "", "--appendonly", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            address = (bench_servers.HOST, self.port)
            with contextlib.suppress(OSError), socket.create_connection(address, 1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return time.perf_counter()
            time.sleep(0.005)
        raise RuntimeError(f"redis-server did not answer on {self.port} in 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@contextlib.contextmanager
def _own_redis(log_dir: Path) -> Iterator[_RedisServer]:
    redis = _RedisServer(log_dir)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


def redis_restart(bench: Bench) -> list[Figure]:
    if "redis" not in Settings.model_fields or shutil.which("redis-server") is None:
        bench.log("  n/a: needs the Redis backend and redis-server on PATH")
        return []
    path = f"/api/v1/projects/{bench.config.projects // 2 + 3}"
    with _own_redis(bench.log_dir) as redis:
        server = bench_servers.start(
            "redis_restart",
            f"{__package__}.apps:full_app",
            {**bench.server_env, "REDIS_URL": redis.url},
            bench.log_dir,
            bench.server_pin,
        )
        try:
            bench_servers.wait_ready([server])
            with httpx.Client(trust_env=False, timeout=10) as http:

                def read() -> httpx.Response:
                    return http.get(server.url(path))

                deadline = time.monotonic() + GIVE_UP_SECONDS
                while statements_of(read()) != 0:  # a hit, from Redis or the local tier
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no cache hit on {path} in {GIVE_UP_SECONDS} s")
                redis.kill()
                failed = requests = 0
                down_until = time.perf_counter() + DOWN_SECONDS
                while time.perf_counter() < down_until:
                    requests += 1
                    failed += read().status_code >= 500
                answering = redis.start()
                while True:
                    response = read()
                    requests += 1
                    failed += response.status_code >= 500
                    if response.status_code == 200 and statements_of(response) == 0:
                        back_ms = (time.perf_counter() - answering) * 1000
                        break
                    if time.perf_counter() - answering > GIVE_UP_SECONDS:
                        raise RuntimeError(f"no cache hit {GIVE_UP_SECONDS} s after the restart")
        finally:
            bench_servers.stop(server)
    bench.raw["redis_restart"] = {"back_ms": back_ms, "requests": requests, "5xx": failed}
    bench.log(f"  back to cache hits {back_ms:.0f} ms after Redis answered; {failed} 5xx")
    detail = (
        f"Redis SIGKILLed for {DOWN_SECONDS:g} s under sequential reads of one project, then "
        f"restarted empty: {requests:,} requests in all; the first hit follows one miss that "
        "refills it"
    )
    return [
        Figure(
            11,
            "Redis restart: first cache hit after Redis answers again",
            back_ms,
            unit="ms",
            target_op="<=",
            target=1000,
            detail=detail,
        ),
        Figure(
            11,
            "Redis restart: 5xx answers while it was down",
            failed,
            unit="errors",
            target_op="==",
            target=0,
            detail=detail,
        ),
    ]
