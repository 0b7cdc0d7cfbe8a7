"""``bench METHOD PATH``: load-test one of the service's routes beside a bare FastAPI route.

Its imports stay light: the CLI imports this module on every call. The load generator, the servers,
httpx and psutil are imported only when the command runs.
"""

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

if TYPE_CHECKING:
    from .driver import LoadGenerator
    from .load import Spec
    from .servers import Server

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
LOAD_GENERATORS = ("auto", "wrk", "python")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token
QUERIES = re.compile(r"queries=(\d+)")
# The service is the package this one is named after: <package>_bench tests <package>.
SERVICE_APP = __name__.removesuffix("_bench.command") + ".main:create_app"
BARE_APP = f"{__package__}.bare:create_bare_app"
# Every request of a bench comes from one address: far above what one machine sends in a minute.
BENCH_RATE_LIMIT = "1000000000/minute"
COLUMNS = (
    "req/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "statements/request",
    "CPU µs/request",
    "ratio to bare",
)


class BadInput(Exception):
    """Input the command refuses, said in one line; the exit status is 2."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Target:
    """A running service given with --url."""

    host: str
    port: int


@dataclass(frozen=True)
class Figures:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # a status of 400 or more, or a transport error
    statements_per_request: int | None  # None: no queries= in the Server-Timing header
    server_cpu_us_per_request: float | None  # None: the server is not ours to watch (--url)


@dataclass(frozen=True)
class Measured:
    route: Figures
    bare: Figures
    load_generator: str  # which tool ran, its version
    pinning: str

    @property
    def ratio_to_bare(self) -> float | None:
        return self.route.rps / self.bare.rps if self.bare.rps else None


def bench(
    method: Annotated[
        str, typer.Argument(metavar="METHOD", help="GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS")
    ],
    path: Annotated[
        str, typer.Argument(metavar="PATH", help="The route and its query: /api/v1/projects?page=2")
    ],
    concurrency: Annotated[int, typer.Option(min=1, help="Keep-alive connections")] = 8,
    duration: Annotated[
        float, typer.Option(min=1, help="Seconds of measured load (wrk: whole seconds)")
    ] = 5.0,
    warmup: Annotated[float, typer.Option(min=0, help="Seconds of load before, not counted")] = 1.0,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", metavar="'NAME: VALUE'", help="A header; repeatable"),
    ] = None,
    body: Annotated[
        str | None,
        typer.Option(
            metavar="STRING|@FILE",
            help="The request body (Content-Type: application/json unless --header sets one)",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(metavar="http://HOST:PORT", help="Measure this running service instead"),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", metavar="OUT.json", help="Write the figures and parameters"),
    ] = None,
    compare: Annotated[
        Path | None,
        typer.Option(metavar="BASELINE.json", help="An earlier --json: exit 1 on a regression"),
    ] = None,
    max_regression: Annotated[
        float,
        typer.Option(metavar="PCT", min=0, help="Percent req/s and p99 may worsen (--compare)"),
    ] = 10.0,
    load_generator: Annotated[
        str, typer.Option(metavar="auto|wrk|python", help="auto: wrk when on PATH and it can")
    ] = "auto",
) -> None:
    """Load-test one route: req/s, latency, errors, statements and CPU per request.

    Without --url it serves the app itself with uvicorn (settings from the environment, so
    DATABASE_URL applies), pinned to one core with taskset, and drives load from another. A bare
    FastAPI route is measured in the same run: the ratio says what the route costs above FastAPI.
    Exits 1 when a request failed or --compare finds a regression, 2 on bad input.
    """
    try:
        request = parse_request(method, path, header or [], body)
        target = parse_url(url)
        baseline = read_baseline(compare) if compare else None
        generator = pick_load_generator(load_generator, request.method)
        require_psutil()
    except BadInput as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if baseline is not None:
        warn_on_another_route(baseline, request)

    try:
        measured = run(request, target, concurrency, duration, warmup, generator)
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    parameters = {
        "method": request.method,
        "path": request.path,
        "url": url,
        "concurrency": concurrency,
        "duration": duration,
        "warmup": warmup,
        # Names only: values such as Authorization do not belong in a file kept as a baseline.
        "header_names": sorted(request.headers),
        "body_bytes": len(request.body.encode()),
        "load_generator": load_generator,
    }
    typer.echo(f"load generator: {measured.load_generator}; {measured.pinning}\n")
    typer.echo(table(request, measured))
    if json_path is not None:
        write_report(json_path, parameters, measured)
    failed = report_failures(request, measured)
    if compare is not None and baseline is not None:  # both or neither
        failed = report_regressions(compare, baseline, measured.route, max_regression) or failed
    raise typer.Exit(1 if failed else 0)


def warn_on_another_route(baseline: dict[str, Any], request: Request) -> None:
    parameters = baseline.get("parameters")
    if not isinstance(parameters, dict):
        parameters = {}
    baseline_route = f"{parameters.get('method')} {parameters.get('path')}"
    if baseline_route != str(request):
        typer.echo(
            f"warning: the baseline measured {baseline_route}, this run {request}",
            err=True,
        )


def write_report(json_path: Path, parameters: dict[str, Any], measured: "Measured") -> None:
    report = {
        "parameters": parameters,
        "load_generator": measured.load_generator,
        "pinning": measured.pinning,
        "route": asdict(measured.route),
        "bare": asdict(measured.bare),
        "ratio_to_bare": measured.ratio_to_bare,
    }
    try:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        typer.echo(f"error: cannot write {json_path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None


def report_failures(request: Request, measured: "Measured") -> bool:
    """Print what failed (no response, errored requests); whether anything did."""
    route, bare = measured.route, measured.bare
    failed = False
    if not route.requests or not bare.requests:
        typer.echo("\nFAILED: no response arrived within the measured seconds")
        failed = True
    if route.errors or bare.errors:
        typer.echo(
            f"\nFAILED: {route.errors} requests to {request}"
            f" and {bare.errors} to the bare route errored (status >= 400 or a transport error)"
        )
        failed = True
    return failed


def report_regressions(
    compare: Path, baseline: dict[str, Any], route: "Figures", max_regression: float
) -> bool:
    """Print the comparison with the baseline; whether the route regressed."""
    lines, regressed = compare_with(route, baseline, max_regression)
    typer.echo(f"\ncompared with {compare} (a regression: more than {max_regression:g}%):")
    typer.echo("\n".join(lines))
    if regressed:
        typer.echo("REGRESSED: " + "; ".join(regressed))
    return bool(regressed)


def parse_request(method: str, path: str, headers: list[str], body: str | None) -> Request:
    method = method.upper()
    if method not in METHODS:
        raise BadInput(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if not path.startswith("/"):
        raise BadInput(f"PATH must start with '/': {path!r}")
    if any(character.isspace() for character in path):
        raise BadInput(f"PATH must not contain spaces (percent-encode them): {path!r}")
    parsed: dict[str, str] = {}
    for text in headers:
        name, colon, value = text.partition(":")
        value = value.strip()
        if not colon or not HEADER_NAME.fullmatch(name) or "\r" in value or "\n" in value:
            raise BadInput(f"malformed header {text!r}: expected 'Name: value'")
        if name.lower() in {"content-length", "transfer-encoding"}:
            raise BadInput(f"header {name} is set by bench from --body")
        parsed[name] = value
    body_text = ""
    if body is not None:
        body_text = read_body(body)
        if not any(name.lower() == "content-type" for name in parsed):
            parsed["Content-Type"] = "application/json"
    return Request(method=method, path=path, headers=parsed, body=body_text)


def read_body(body: str) -> str:
    """``--body``: the text itself, or a file's text with ``@FILE``."""
    if not body.startswith("@"):
        return body
    body_file = Path(body[1:])
    try:
        return body_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read body file {body_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"body file {body_file} is not UTF-8 text") from None


def parse_url(url: str | None) -> Target | None:
    if url is None:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        raise BadInput(f"--url has a bad port: {url!r}") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in {"", "/"} or parts.query:
        raise BadInput(f"--url must look like http://host:port (no path, no https): {url!r}")
    return Target(host=parts.hostname, port=port)


def read_baseline(path: Path) -> dict[str, Any]:
    """A previous ``--json`` file, checked for the figures ``--compare`` needs."""
    try:
        baseline = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read baseline {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BadInput(f"bad baseline {path}: not JSON ({exc})") from None

    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    route = baseline.get("route") if isinstance(baseline, dict) else None
    if not (
        isinstance(baseline, dict)
        and isinstance(route, dict)
        and number(route.get("rps"))
        and number(route.get("p99_ms"))
        and (route.get("statements_per_request") is None or number(route["statements_per_request"]))
    ):
        raise BadInput(
            f"bad baseline {path}: it needs route.rps, route.p99_ms and"
            " route.statements_per_request, as bench --json writes them"
        )
    return baseline


def pick_load_generator(choice: str, method: str) -> str:
    """``auto``: wrk when it is on PATH and can send the request, else the Python generator."""
    if choice not in LOAD_GENERATORS:
        raise BadInput(f"--load-generator must be one of {', '.join(LOAD_GENERATORS)}: {choice!r}")
    if choice == "wrk" and shutil.which("wrk") is None:
        raise BadInput("--load-generator wrk: wrk is not on PATH (Debian: apt-get install wrk)")
    # wrk waits for the body a HEAD response announces and never gets it: no request completes.
    if method == "HEAD":
        if choice == "wrk":
            raise BadInput("--load-generator wrk cannot measure HEAD: use python")
        return "python"
    return choice


def require_psutil() -> None:
    """The CPU time of the servers this command starts is psutil's to read."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise BadInput("the server's CPU time needs psutil: uv sync --group bench") from None


def run(
    request: Request,
    target: Target | None,
    concurrency: int,
    duration: float,
    warmup: float,
    choice: str,
) -> Measured:
    """Start the servers, sample the statements, measure the route and the bare route."""
    from . import servers
    from .bare import BARE_PATH
    from .driver import load_generator
    from .load import Spec

    server_pin, client_pin, pinning = servers.core_pins()
    load = load_generator(choice, client_pin)
    environment = dict(os.environ)
    # Counted by the rate limit as always, never refused (unless the environment sets a limit).
    environment.setdefault("RATE_LIMIT_DEFAULT", BENCH_RATE_LIMIT)

    started: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as log_dir:
        try:
            if target is None:
                typer.echo("starting the service and the bare route", err=True)
                started.append(
                    servers.start("service", SERVICE_APP, environment, Path(log_dir), server_pin)
                )
            bare = servers.start("bare", BARE_APP, environment, Path(log_dir), server_pin)
            started.append(bare)
            servers.wait_ready(started)  # a server that fails to start: its log is in the error
            service = None if target else started[0]  # with --url: not ours to watch
            # Its port once it answers: wait_ready serves it on another if its first was taken.
            target = target or Target(host=servers.HOST, port=started[0].port)
            try:
                statements = sample_statements(target, request)
                typer.echo(
                    f"measuring {request}: {concurrency} connections,"
                    f" {warmup:g} s warm-up, {duration:g} s",
                    err=True,
                )
                route_spec = Spec(
                    target.host,
                    target.port,
                    connections=concurrency,
                    duration=duration,
                    **asdict(request),
                )
                route = measure(load, route_spec, warmup, service)
                typer.echo("measuring the bare route", err=True)
                bare_spec = Spec(
                    servers.HOST, bare.port, BARE_PATH, connections=concurrency, duration=duration
                )
                bare_figures = measure(load, bare_spec, warmup, bare)
            except RuntimeError as exc:
                # The logs are in a temporary directory: a crash under load shows its traceback.
                raise RuntimeError(f"{exc}{log_tails(started)}") from None
        finally:
            for server in started:
                servers.stop(server)
    return Measured(
        route=replace(route, statements_per_request=statements),
        bare=bare_figures,
        load_generator=load.describe(),
        pinning=pinning,
    )


def log_tails(started: "list[Server]") -> str:
    return "".join(
        f"\n{server.name} server log:\n{tail}" for server in started if (tail := server.log_tail())
    )


def sample_statements(target: Target, request: Request) -> int | None:
    """The statement count of one request, from its ``Server-Timing`` header (``queries=N``).

    Without --url it is the first request the server gets: with its cache empty, what a miss costs.
    """
    import httpx

    url = f"http://{target.host}:{target.port}{request.path}"
    try:
        with httpx.Client(trust_env=False, timeout=30) as client:
            response = client.request(
                request.method, url, headers=request.headers, content=request.body.encode()
            )
    except httpx.TransportError as exc:
        raise RuntimeError(f"{request.method} {url} failed: {exc!r}") from None
    if response.status_code >= 400:
        typer.echo(
            f"warning: the first {request} answered {response.status_code}: {response.text[:200]}",
            err=True,
        )
    match = QUERIES.search(response.headers.get("server-timing", ""))
    return int(match.group(1)) if match else None


def measure(load: "LoadGenerator", spec: "Spec", warmup: float, server: "Server | None") -> Figures:
    """A warm-up run (not counted), then the measured one, with the server's CPU time around it
    when the server is ours."""
    if warmup > 0:
        load.timed(replace(spec, duration=warmup))
    cpu_before = server.cpu_seconds() if server else 0.0
    result = load.timed(spec)
    cpu_us = None
    if server is not None and result.requests:
        cpu_us = (server.cpu_seconds() - cpu_before) / result.requests * 1_000_000
    loaded = {name: value for name, value in asdict(result).items() if name != "server_cpu_us"}
    return Figures(**loaded, statements_per_request=None, server_cpu_us_per_request=cpu_us)


def table(request: Request, measured: Measured) -> str:
    """Aligned columns: the route's row and the bare route's, under ``COLUMNS``."""

    def optional(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    cells = [("", *COLUMNS)]
    for name, figures, ratio in (
        (str(request), measured.route, measured.ratio_to_bare),
        ("bare FastAPI route", measured.bare, 1.0),
    ):
        cells.append(
            (
                name,
                f"{figures.rps:.1f}",
                f"{figures.p50_ms:.2f}",
                f"{figures.p99_ms:.2f}",
                str(figures.errors),
                optional(figures.statements_per_request, 0),
                optional(figures.server_cpu_us_per_request, 0),
                optional(ratio, 2),
            )
        )
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    lines = []
    for row in cells:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
    return "\n".join(lines)


def compare_with(
    route: Figures, baseline: dict[str, Any], max_regression: float
) -> tuple[list[str], list[str]]:
    """One line per figure against the baseline's, and the regressions: req/s lower or p99
    higher by more than ``max_regression`` percent, or more statements per request at all."""
    before = baseline["route"]
    lines, regressed = [], []
    for name, now, then, higher_is_worse in (
        ("req/s", route.rps, before["rps"], False),
        ("p99 ms", route.p99_ms, before["p99_ms"], True),
    ):
        if then <= 0:
            lines.append(f"  {name:<19} {now:.2f} (baseline {then}: not compared)")
            continue
        change = (now - then) / then * 100
        worse = change > max_regression if higher_is_worse else change < -max_regression
        verdict = "REGRESSED" if worse else "ok"
        lines.append(f"  {name:<19} {now:.2f} vs {then:.2f} ({change:+.1f}%)  {verdict}")
        if worse:
            regressed.append(f"{name} {change:+.1f}% ({then:.2f} -> {now:.2f})")
    now_statements, then_statements = route.statements_per_request, before["statements_per_request"]
    if now_statements is None or then_statements is None:
        lines.append(f"  {'statements/request':<19} not compared (n/a)")
    else:
        worse = now_statements > then_statements
        verdict = "REGRESSED" if worse else "ok"
        comparison = f"{now_statements} vs {then_statements}"
        lines.append(f"  {'statements/request':<19} {comparison}  {verdict}")
        if worse:
            regressed.append(f"statements/request {then_statements} -> {now_statements}")
    return lines, regressed
