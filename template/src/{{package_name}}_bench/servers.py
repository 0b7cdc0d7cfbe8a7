"""Bench servers: uvicorn (uvloop, httptools) in subprocesses, pinned to the server core."""

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

HOST = "127.0.0.1"
# What uvicorn logs when its port was taken meanwhile.
ADDRESS_IN_USE = "address already in use"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    factory: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    pin: list[str]

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def core_pins() -> tuple[list[str], list[str], str]:
    """``taskset`` prefixes for the server and the load generator on two different cores, and a
    sentence saying so (or why they are not pinned)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) < 2 or shutil.which("taskset") is None:
        return [], [], "not pinned (needs taskset and 2 cores)"
    server, client = str(cores[0]), str(cores[1])
    return (
        ["taskset", "-c", server],
        ["taskset", "-c", client],
        f"server on CPU {server}, load generator on CPU {client} (taskset)",
    )


def start(name: str, factory: str, env: dict[str, str], log_dir: Path, pin: list[str]) -> Server:
    """Serve the app that ``factory`` ("module:function") makes, on a free port."""
    log_path = log_dir / f"server-{name}.log"
    port, process = _serve(factory, env, log_path, pin)
    return Server(name, factory, port, process, log_path, env, pin)


def _serve(
    factory: str, env: dict[str, str], log_path: Path, pin: list[str]
) -> tuple[int, subprocess.Popen[bytes]]:
    # uvicorn binds the port itself: a socket handed over with --fd would be taken for a Unix
    # socket (uvicorn's fromfd), and its connections would lose TCP_NODELAY (40 ms answers).
    port = free_port()
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    command = [
        *pin,
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        loop,
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    log: IO[bytes]
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and app
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    return port, process


def wait_ready(servers: list[Server], timeout: float = 90.0) -> None:
    """Until each server answers on its port from its own process. The port was free when it
    was chosen; another process may take it before uvicorn binds it: that answer is not
    taken for the server's, and the server starts again on another port."""
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2) as client:
        for server in servers:
            while True:
                if server.process.poll() is not None:
                    if ADDRESS_IN_USE in server.log_tail() and time.monotonic() < deadline:
                        server.port, server.process = _serve(
                            server.factory, server.env, server.log_path, server.pin
                        )
                        continue
                    raise RuntimeError(
                        f"bench server {server.name} exited {server.process.returncode}:\n"
                        f"{server.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    answered = client.get(server.url("/health/live")).status_code == 200
                    if answered and _listens(server):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench server {server.name} did not answer in {timeout} s")
                time.sleep(0.2)


def _listens(server: Server) -> bool:
    """Whether the server's own process listens on its port (not another that took it)."""
    import psutil

    return any(
        connection.status == psutil.CONN_LISTEN and connection.laddr.port == server.port
        for connection in psutil.Process(server.process.pid).net_connections(kind="tcp")
    )


def stop(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.process.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=grace)
            return
