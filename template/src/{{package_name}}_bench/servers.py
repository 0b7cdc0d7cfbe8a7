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
    """Serve the app that ``factory`` ("module:function") makes on a port bound here, before the
    server starts, and handed to it (``--fd``): no other process can take the port meanwhile."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    log_path = log_dir / f"server-{name}.log"
    log: IO[bytes]
    with socket.socket() as listener, log_path.open("wb") as log:
        listener.bind((HOST, 0))
        listener.listen(2048)  # connections wait here until uvicorn accepts them
        command = [
            *pin,
            sys.executable,
            "-m",
            "uvicorn",
            factory,
            "--factory",
            "--fd",
            str(listener.fileno()),
            "--loop",
            loop,
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and app
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
            start_new_session=True,  # its own process group: stopped as a whole
        )
        port = int(listener.getsockname()[1])
    return Server(name=name, factory=factory, port=port, process=process, log_path=log_path)


def wait_ready(servers: list[Server], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2) as client:
        for server in servers:
            while True:
                if server.process.poll() is not None:
                    raise RuntimeError(
                        f"bench server {server.name} exited {server.process.returncode}:\n"
                        f"{server.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(server.url("/health/live")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench server {server.name} did not answer in {timeout} s")
                time.sleep(0.2)


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
