"""A small HTTP/1.1 load generator on raw asyncio streams, run in its own process.

``python -m <package>_bench.load '<json spec>'`` prints one JSON line (``-`` instead of the spec:
read it from stdin, for bodies too big for an argument). Two modes:

- ``timed``: ``connections`` keep-alive connections send requests back to back for ``warmup`` +
  ``duration`` seconds; responses completed during ``duration`` count.
- ``burst``: open ``connections`` connections first, then send one request on each at once and
  report every response's status and the statement count from its ``Server-Timing`` header.

It imports only the standard library (and uvloop when present), so it starts in milliseconds and
uses one core: the bench pins it to a different core from the server's.
"""

import asyncio
import json
import re
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

QUERIES = re.compile(rb"queries=(\d+)")


@dataclass(frozen=True)
class Spec:
    host: str
    port: int
    path: str
    mode: str = "timed"
    connections: int = 16
    duration: float = 5.0
    warmup: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    body: str = ""  # sent UTF-8 encoded, with its Content-Length

    def request(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1"]
        if not any(name.lower() == "host" for name in self.headers):
            lines.append(f"Host: {self.host}:{self.port}")
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        body = self.body.encode()
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body_bytes: int


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> Response:
    """One response; after a HEAD request (``head_request``) no body follows its headers."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split(b" ", 2)[1])
    body_bytes = 0
    if head_request or status in {204, 304} or status < 200:
        return Response(status, headers, body_bytes)  # no body, whatever the headers say
    if b"content-length" in headers:
        body_bytes = int(headers[b"content-length"])
        await reader.readexactly(body_bytes)
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF
            body_bytes += size
            if size == 0:
                break
    return Response(status, headers, body_bytes)


@dataclass
class Timed:
    requests: int = 0
    errors: int = 0
    socket_errors: int = 0
    latencies: list[float] = field(default_factory=list)


async def _timed_worker(spec: Spec, request: bytes, start: float, end: float, out: Timed) -> None:
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    try:
        while (sent := time.perf_counter()) < end:
            try:
                writer.write(request)
                response = await read_response(reader, head_request=spec.method == "HEAD")
            except (OSError, asyncio.IncompleteReadError):
                out.socket_errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
                continue
            done = time.perf_counter()
            if start <= done < end:
                out.requests += 1
                out.latencies.append(done - sent)
                if response.status >= 400:
                    out.errors += 1
    finally:
        writer.close()


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_timed(spec: Spec) -> dict[str, Any]:
    request = spec.request()
    start = time.perf_counter() + spec.warmup
    end = start + spec.duration
    out = Timed()
    await asyncio.gather(
        *(_timed_worker(spec, request, start, end, out) for _ in range(spec.connections))
    )
    latencies = sorted(out.latencies)
    return {
        "requests": out.requests,
        "seconds": spec.duration,
        "rps": out.requests / spec.duration,
        "errors": out.errors + out.socket_errors,
        "socket_errors": out.socket_errors,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else 0.0) * 1000,
    }


async def run_burst(spec: Spec) -> dict[str, Any]:
    connections = await asyncio.gather(
        *(asyncio.open_connection(spec.host, spec.port) for _ in range(spec.connections))
    )
    request = spec.request()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Response:
        writer.write(request)
        return await read_response(reader, head_request=spec.method == "HEAD")

    try:
        responses = await asyncio.gather(*(one(r, w) for r, w in connections))
    finally:
        for _, writer in connections:
            writer.close()
    queries = []
    for response in responses:
        match = QUERIES.search(response.headers.get(b"server-timing", b""))
        queries.append(int(match.group(1)) if match else -1)
    return {"statuses": [r.status for r in responses], "queries": queries}


def run(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> None:
    spec_json = sys.stdin.read() if sys.argv[1] == "-" else sys.argv[1]
    spec = Spec(**json.loads(spec_json))
    result = run(run_burst(spec) if spec.mode == "burst" else run_timed(spec))
    print(json.dumps({"spec": asdict(spec), **result}))


if __name__ == "__main__":
    main()
