"""A small HTTP/1.1 load generator on raw asyncio streams, run in its own process.

``python -m <package>_bench.load '<json spec>'`` prints one JSON line, a ``LoadResult`` (``-``
instead of the spec: read it from stdin, for bodies too big for an argument): ``connections``
keep-alive connections send requests back to back for ``duration`` seconds; the responses
completed by then count. If none has completed by then (a cold route on a loaded machine), the
window lasts until one does, at most ``GRACE_SECONDS`` more, and the rate is over the time it
lasted: a short run never reports 0 req/s for a route that answers.

It imports only the standard library (and uvloop when present), so it starts in milliseconds and
uses one core: the bench pins it to a different core from the server's.
"""

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

# How long past its end a window waits for its first response (wrk's --timeout in the bench).
GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_us: float = 0.0  # the server's CPU time per request, filled in by the caller


@dataclass(frozen=True)
class Spec:
    host: str
    port: int
    path: str
    connections: int = 16
    duration: float = 5.0
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
    errors: int = 0  # a status of 400 or more, or a transport error
    latencies: list[float] = field(default_factory=list)  # one a response completed in time
    last_done: float = 0.0  # when the last counted response completed

    def open(self, now: float, end: float) -> bool:
        """Whether the window is still open: before its end, or past it with nothing counted."""
        return now < end or (not self.latencies and now < end + GRACE_SECONDS)


async def _timed_worker(spec: Spec, request: bytes, end: float, out: Timed) -> None:
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    try:
        while out.open(sent := time.perf_counter(), end):
            try:
                writer.write(request)
                response = await read_response(reader, head_request=spec.method == "HEAD")
            except (OSError, asyncio.IncompleteReadError):
                out.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(spec.host, spec.port)
                continue
            done = time.perf_counter()
            if out.open(done, end):
                out.latencies.append(done - sent)
                out.last_done = done
                if response.status >= 400:
                    out.errors += 1
    finally:
        writer.close()


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_timed(spec: Spec) -> LoadResult:
    request = spec.request()
    start = time.perf_counter()
    end = start + spec.duration
    out = Timed()
    await asyncio.gather(*(_timed_worker(spec, request, end, out) for _ in range(spec.connections)))
    latencies = sorted(out.latencies)
    seconds = max(spec.duration, out.last_done - start)
    return LoadResult(
        requests=len(latencies),
        seconds=seconds,
        rps=len(latencies) / seconds,
        errors=out.errors,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
    )


def main() -> None:
    spec_json = sys.stdin.read() if sys.argv[1] == "-" else sys.argv[1]
    spec = Spec(**json.loads(spec_json))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run_timed(spec))
    else:
        result = uvloop.run(run_timed(spec))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
