"""Drives load from a separate process: wrk when it is on PATH, else ``load.py``."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from .load import LoadResult, Spec

LOAD_MODULE = f"{__package__}.load"


class LoadGenerator:
    """Runs one timed load, described by a ``Spec``, in its own process: ``load.py``."""

    name = "load generator"

    def __init__(self, pin: list[str]) -> None:
        self.pin = pin  # e.g. ["taskset", "-c", "1"], or [] where pinning is not possible

    def describe(self) -> str:
        return "Python asyncio load generator (load.py, raw HTTP/1.1 keep-alive streams)"

    def timed(self, spec: Spec) -> LoadResult:
        spec_json = json.dumps(asdict(spec))  # on stdin: bodies can be big
        output = self.run([sys.executable, "-m", LOAD_MODULE, "-"], spec.duration, spec_json)
        return LoadResult(**json.loads(output.splitlines()[-1]))

    def run(self, command: list[str], duration: float, stdin: str | None = None) -> str:
        """``command`` on the load generator's core; its output, or its error as RuntimeError."""
        completed = subprocess.run(  # noqa: S603 - our own interpreter, or the wrk on PATH
            [*self.pin, *command],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=duration + 120,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{self.name} failed: {completed.stderr.strip()[-2000:]}")
        return completed.stdout


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

    def __init__(self, pin: list[str], executable: str) -> None:
        super().__init__(pin)
        self.executable = executable
        version = subprocess.run(  # noqa: S603 - the wrk found on PATH
            [executable, "--version"], capture_output=True, text=True, check=False
        )
        self.version = (version.stdout + version.stderr).split("Copyright")[0].strip()

    def describe(self) -> str:
        return f"{self.version} (one thread)"

    def timed(self, spec: Spec) -> LoadResult:
        url = f"http://{spec.host}:{spec.port}{spec.path}"
        header_args = [
            arg for name, value in spec.headers.items() for arg in ("-H", f"{name}: {value}")
        ]
        seconds = max(1, round(spec.duration))  # wrk takes whole seconds only
        with tempfile.TemporaryDirectory(prefix="wrk-") as script_dir:
            script_args = []
            if spec.method != "GET" or spec.body:
                script = Path(script_dir) / "request.lua"
                script.write_text(wrk_request_script(spec.method, spec.body))
                script_args = ["-s", str(script)]
            command = [
                self.executable, "-t1", f"-c{spec.connections}", f"-d{seconds}s",
                "--timeout", "30s", "--latency", *header_args, *script_args, url,
            ]  # fmt: skip
            output = self.run(command, seconds)
        try:
            return parse_wrk(output, seconds)
        except (AttributeError, KeyError, ValueError):
            raise RuntimeError(f"unexpected wrk output:\n{output}") from None


def wrk_request_script(method: str, body: str) -> str:
    """A wrk Lua script that sends ``method`` with ``body`` (wrk adds its Content-Length)."""

    def lua_string(text: str) -> str:
        # Every byte as a decimal escape: any body, quotes and newlines included, is a literal.
        return '"' + "".join(f"\\{byte:03d}" for byte in text.encode()) + '"'

    return f"wrk.method = {lua_string(method)}\nwrk.body = {lua_string(body)}\n"


def load_generator(choice: str, pin: list[str]) -> LoadGenerator:
    """``auto`` prefers wrk (a C tool: it cannot be the bottleneck) when it is on PATH."""
    wrk = shutil.which("wrk")
    if choice in {"auto", "wrk"} and wrk is not None:
        return Wrk(pin, wrk)
    return LoadGenerator(pin)
