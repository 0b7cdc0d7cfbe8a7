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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

HOST = "127.0.0.1"
# What uvicorn logs when its port was taken meanwhile.
ADDRESS_IN_USE = "address already in use"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """The app that ``factory`` ("module:function") makes, served on a free port."""

    name: str
    factory: str
    env: dict[str, str]
    log_path: Path
    pin: list[str]
    port: int = field(init=False)
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.serve()

    def serve(self) -> None:
        # uvicorn binds the port itself: a socket handed over with --fd would be taken for a Unix
        # socket (uvicorn's fromfd), and its connections would lose TCP_NODELAY (40 ms answers).
        self.port = free_port()
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        command = [
            *self.pin,
            sys.executable,
            "-m",
            "uvicorn",
            self.factory,
            "--factory",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--loop",
            loop,
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and app
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def cpu_seconds(self) -> float:
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
    return Server(name, factory, env, log_dir / f"server-{name}.log", pin)


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
                        server.serve()
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
