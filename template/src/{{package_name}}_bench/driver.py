"""Drives load from a separate process: wrk when it is on PATH, else ``load.py``."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .load import Spec

LOAD_MODULE = f"{__package__}.load"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_us: float = 0.0  # the server's CPU time per request, filled in by the runner


class LoadGenerator:
    """Runs one timed load against a URL path; ``name`` says which tool, for the report."""

    name = "python"

    def __init__(self, host: str, pin: list[str]) -> None:
        self.host = host
        self.pin = pin  # e.g. ["taskset", "-c", "1"], or [] where pinning is not possible

    def timed(
        self,
        port: int,
        path: str,
        *,
        connections: int,
        duration: float,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: str = "",
    ) -> LoadResult:
        result = run_python(
            self.pin,
            Spec(
                host=self.host,
                port=port,
                path=path,
                connections=connections,
                duration=duration,
                headers=headers or {},
                method=method,
                body=body,
            ),
        )
        return LoadResult(
            requests=result["requests"],
            seconds=result["seconds"],
            rps=result["rps"],
            errors=result["errors"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
        )

    def describe(self) -> str:
        return "Python asyncio load generator (load.py, raw HTTP/1.1 keep-alive streams)"


def run_python(pin: list[str], spec: Spec) -> dict[str, Any]:
    """Run ``load.py`` in its own process and return its JSON result."""
    spec_json = json.dumps(asdict(spec))
    completed = subprocess.run(  # noqa: S603 - our own interpreter and module
        [*pin, sys.executable, "-m", LOAD_MODULE, "-"],  # the spec on stdin: bodies can be big
        input=spec_json,
        capture_output=True,
        text=True,
        check=False,
        timeout=spec.warmup + spec.duration + 120,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed: {completed.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.splitlines()[-1])
    return result


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str, seconds: float) -> LoadResult:
    """The figures we need from ``wrk --latency`` output."""
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if socket := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(n) for n in socket.groups())
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non_2xx.group(1))
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    return LoadResult(
        requests=requests,
        seconds=seconds,
        rps=requests / seconds,
        errors=errors,
        p50_ms=_duration_ms(percentiles["50"]),
        p99_ms=_duration_ms(percentiles["99"]),
    )


class Wrk(LoadGenerator):
    name = "wrk"

    def __init__(self, host: str, pin: list[str], executable: str) -> None:
        super().__init__(host, pin)
        self.executable = executable
        version = subprocess.run(  # noqa: S603 - the wrk found on PATH
            [executable, "--version"], capture_output=True, text=True, check=False
        )
        self.version = (version.stdout + version.stderr).split("Copyright")[0].strip()

    def describe(self) -> str:
        return f"{self.version} (one thread)"

    def timed(
        self,
        port: int,
        path: str,
        *,
        connections: int,
        duration: float,
        headers: dict[str, str] | None = None,
        method: str = "GET",
        body: str = "",
    ) -> LoadResult:
        url = f"http://{self.host}:{port}{path}"
        header_args = [
            arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")
        ]
        seconds = max(1, round(duration))  # wrk takes whole seconds only
        with tempfile.TemporaryDirectory(prefix="wrk-") as script_dir:
            script_args = []
            if method != "GET" or body:
                script = Path(script_dir) / "request.lua"
                script.write_text(wrk_request_script(method, body))
                script_args = ["-s", str(script)]
            command = [
                *self.pin, self.executable, "-t1", f"-c{connections}", f"-d{seconds}s",
                "--timeout", "30s", "--latency", *header_args, *script_args, url,
            ]  # fmt: skip
            completed = subprocess.run(  # noqa: S603 - the wrk found on PATH
                command, capture_output=True, text=True, check=False, timeout=seconds + 120
            )
        if completed.returncode != 0:
            raise RuntimeError(f"wrk failed: {completed.stderr.strip()[-2000:]}")
        try:
            return parse_wrk(completed.stdout, seconds)
        except (AttributeError, KeyError, ValueError):
            raise RuntimeError(f"unexpected wrk output:\n{completed.stdout}") from None


def wrk_request_script(method: str, body: str) -> str:
    """A wrk Lua script that sends ``method`` with ``body`` (wrk adds its Content-Length)."""

    def lua_string(text: str) -> str:
        # Every byte as a decimal escape: any body, quotes and newlines included, is a literal.
        return '"' + "".join(f"\\{byte:03d}" for byte in text.encode()) + '"'

    return f"wrk.method = {lua_string(method)}\nwrk.body = {lua_string(body)}\n"


def load_generator(choice: str, host: str, pin: list[str]) -> LoadGenerator:
    """``auto`` prefers wrk (a C tool: it cannot be the bottleneck) when it is on PATH."""
    wrk = shutil.which("wrk")
    if choice in {"auto", "wrk"} and wrk is not None:
        return Wrk(host, pin, wrk)
    return LoadGenerator(host, pin)
