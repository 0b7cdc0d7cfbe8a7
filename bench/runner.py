"""The figures: each pattern measured beside its naive twin, in one run, on the same servers."""

import asyncio
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Collection

from bench_service.pagination import CursorCodec
from bench_service.schemas import ITEM_EXPORT_FIELDS
from bench_service.settings import Settings
from bench_service_bench.load import LoadResult
from sqlalchemy.engine import make_url

from .apps import CEILING_PAGE_PATH, CEILING_PATH, FIFTY_PATH
from .harness import Bench, Load, burst, statements_of
from .jobs import jobs
from .pooler import pooler
from .redis_restart import redis_restart
from .report import Figure

MB = 1024 * 1024
EXPORT_QUERY = f"SELECT {', '.join(ITEM_EXPORT_FIELDS)} FROM items ORDER BY id"
COPY_QUERY = f"COPY (SELECT row_to_json(t) FROM ({EXPORT_QUERY}) AS t) TO STDOUT"
# A cached hit, answered before routing with every middleware, against a bare FastAPI route
# answering the same bytes with none (issue 28).
HIT_TARGET = 1.5


def _rps(a: LoadResult, b: LoadResult) -> str:
    return (
        f"{a.rps:,.0f} vs {b.rps:,.0f} req/s; server CPU {a.server_cpu_us:,.0f} vs "
        f"{b.server_cpu_us:,.0f} us/request"
    )


def _set_ceiling(bench: Bench, ceiling_path: str, body: bytes) -> None:
    bench.http.put(bench.servers["bare"].url(ceiling_path), content=body).raise_for_status()
    if bench.get("bare", ceiling_path).content != body:
        raise RuntimeError(f"the ceiling {ceiling_path} does not return the bytes it was given")


def ceiling(bench: Bench) -> list[Figure]:
    path = "/api/v1/projects/1"
    size = bench.config.list_page_size
    page_path = f"/api/v1/projects?page=1&page_size={size}"
    _set_ceiling(bench, CEILING_PATH, bench.get("full", path).content)  # the miss fills the cache
    _set_ceiling(bench, CEILING_PAGE_PATH, bench.get("cached", page_path).content)
    loads = [
        Load("1: cached project, full stack", "full", path),
        Load("1: bare FastAPI route, same bytes, no middleware", "bare", CEILING_PATH),
        Load(f"1: cached page of {size}, full stack", "cached", page_path),
        Load("1: bare FastAPI route, same page bytes, no middleware", "bare", CEILING_PAGE_PATH),
    ]
    memory = "memory" in bench.servers  # the memory backend beside Redis's, in the same rounds
    if memory:
        bench.get("memory", path)
        bench.get("memory", page_path)
        loads += [
            Load("1: cached project, memory backend", "memory", path),
            Load(f"1: cached page of {size}, memory backend", "memory", page_path),
        ]
    cached, top, cached_page, top_page, *memory_hits = bench.compare(*loads)
    figures = [
        Figure(
            1,
            "cached GET /projects/{id} vs bare route (req/s)",
            cached.rps / top.rps,
            target_op=">=",
            target=HIT_TARGET,
            detail=_rps(cached, top),
        ),
        Figure(
            1,
            f"cached page of {size} vs bare route (req/s)",
            cached_page.rps / top_page.rps,
            target_op=">=",
            target=HIT_TARGET,
            detail=_rps(cached_page, top_page),
        ),
    ]
    if memory:
        memory_detail, memory_page = memory_hits
        for label, hit, redis_hit, ceiling_hit in (
            ("GET /projects/{id}", memory_detail, cached, top),
            (f"page of {size}", memory_page, cached_page, top_page),
        ):
            figures.append(
                Figure(
                    1,
                    f"memory backend: cached {label} vs bare route (req/s)",
                    hit.rps / ceiling_hit.rps,
                    target_op=">=",
                    target=HIT_TARGET,
                    detail=f"{_rps(hit, ceiling_hit)}; {hit.rps / redis_hit.rps:.2f}x of Redis's",
                )
            )
    if "redis" in Settings.model_fields:
        figures += freshness(bench)
    return figures


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def freshness(bench: Bench, rounds: int = 40) -> list[Figure]:
    """A PATCH answered by one server ("full") until another ("cached", same database and Redis)
    serves the new value: from the PATCH's response to the end of the first GET on the other
    server that answers it (its own reload from the database included)."""
    project_id = bench.config.projects // 2 + 2  # not the stampede's cold key
    path = f"/api/v1/projects/{project_id}"
    delays: list[float] = []
    stale: list[float] = []  # to the start of that GET: how long B served the old value
    owner = bench.get("full", path).json()["owner"]["id"]
    signed_in = {"Authorization": f"Bearer {bench.token_for(owner)}"}
    for n in range(rounds):
        for _ in range(3):  # the other server holds the current value (locally, if it can)
            bench.get("cached", path)
        name = f"bench freshness {n}"
        response = bench.http.patch(
            bench.servers["full"].url(path), json={"name": name}, headers=signed_in
        )
        response.raise_for_status()
        written = time.perf_counter()
        while True:
            started = time.perf_counter()
            if bench.get("cached", path).json()["name"] == name:
                break
            if started - written > 5:
                raise RuntimeError("the other server still served the old name after 5 s")
        delays.append((time.perf_counter() - written) * 1000)
        stale.append((started - written) * 1000)
    p50, p99 = _percentiles(delays)
    stale_p50, stale_p99 = _percentiles(stale)
    bench.raw["freshness_ms"] = {"served": delays, "stale_window": stale}
    bench.log(f"  freshness across servers: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    detail = (
        f"{rounds} PATCHes on one server, GETs on another (same Redis); B served the old value "
        f"for p50 {stale_p50:.2f} ms, p99 {stale_p99:.2f} ms (the rest is B's own reload)"
    )
    return [
        Figure(1, "write on A seen by B: p50", p50, unit="ms", detail=detail),
        Figure(
            1, "write on A seen by B: p99", p99, unit="ms", target_op="<=", target=50, detail=detail
        ),
    ]


def n_plus_one(bench: Bench) -> list[Figure]:
    size = bench.config.list_page_size
    eager_path = f"/api/v1/projects?page_size={size}"
    naive_path = f"/bench/projects-naive?page_size={size}"
    bench.get("full", eager_path)  # counts the total once; then it is cached until a write
    eager, naive = bench.get("full", eager_path), bench.get("full", naive_path)
    if eager.content != naive.content:
        raise RuntimeError("the N+1 page does not return the eager page's JSON")
    eager_rps, naive_rps = bench.compare(
        Load(f"2: eager page of {size}", "full", eager_path),
        Load(f"2: N+1 page of {size}", "full", naive_path),
    )
    return [
        Figure(
            2,
            f"eager page of {size}: statements per request",
            statements_of(eager),
            unit="statements",
            target_op="==",
            target=1,
            detail="one SELECT joining the owners, JSON built by the database; total cached",
        ),
        Figure(
            2,
            f"N+1 page of {size}: statements per request",
            statements_of(naive),
            unit="statements",
            target_op="==",
            target=size + 2,
            detail=f"count(*) + projects + {size} owner SELECTs",
        ),
        Figure(
            2,
            f"eager vs N+1 page of {size} (req/s)",
            eager_rps.rps / naive_rps.rps,
            target_op=">",
            target=1.0,
            detail=_rps(eager_rps, naive_rps),
        ),
    ]


def pagination(bench: Bench) -> list[Figure]:
    size, depth = bench.config.deep_page_size, bench.config.depth
    cursor = CursorCodec(bench.secret_key.encode()).encode({"id": (depth - 1) * size})
    keyset_first = f"/api/v1/projects/cursor?limit={size}"
    keyset_deep = f"{keyset_first}&cursor={cursor}"
    offset_first = f"/api/v1/projects?page=1&page_size={size}"
    offset_deep = f"/api/v1/projects?page={depth}&page_size={size}"
    deep_ids = [p["id"] for p in bench.get("full", keyset_deep).json()["items"]]
    if deep_ids != [p["id"] for p in bench.get("full", offset_deep).json()["items"]]:
        raise RuntimeError("keyset and offset disagree about the deep page")
    # Few connections: 32 deep offset scans at once take seconds each on 2 cores, longer than
    # a round; the ratio is of time per request, at the same concurrency on both sides.
    connections = min(4, bench.config.connections)
    k1, kd, o1, od = bench.compare(
        Load("3: keyset page 1", "full", keyset_first, connections=connections),
        Load(f"3: keyset page {depth}", "full", keyset_deep, connections=connections),
        Load("3: offset page 1", "full", offset_first, connections=connections),
        Load(f"3: offset page {depth}", "full", offset_deep, connections=connections),
    )
    return [
        Figure(
            3,
            f"keyset page {depth:,} vs page 1 (time per request)",
            k1.rps / kd.rps,
            target_op="<=",
            target=1.5,
            detail=_rps(kd, k1),
        ),
        Figure(
            3,
            f"offset page {depth:,} vs page 1 (time per request)",
            o1.rps / od.rps,
            detail=_rps(od, o1),
        ),
    ]


class _RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.baseline = self.peak = self.process.memory_info().rss
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)


def _copy_rows_per_second(bench: Bench) -> tuple[float, str]:
    """PostgreSQL's own JSON export (COPY through psql), or sqlite3's raw fetch on SQLite."""
    if bench.database.backend == "sqlite":
        started = time.perf_counter()
        with sqlite3.connect(bench.database.name) as conn:
            cursor = conn.execute(EXPORT_QUERY)
            rows = 0
            while batch := cursor.fetchmany(10_000):
                rows += len(batch)
        return rows / (time.perf_counter() - started), "sqlite3 raw fetch"
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is not on PATH (Debian: apt-get install postgresql-client)")
    url = make_url(bench.database.url).set(drivername="postgresql")
    started = time.perf_counter()
    rows, _ = _read_lines(
        "psql COPY",
        [*bench.client_pin, psql, url.render_as_string(hide_password=False)]
        + ["-X", "-q", "-c", COPY_QUERY],
    )
    return rows / (time.perf_counter() - started), "psql COPY row_to_json"


def _read_lines(name: str, command: list[str]) -> tuple[int, int]:
    """Run a client (psql, curl) and count the lines and bytes it writes, as fast as it writes."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE)  # noqa: S603 - tools from PATH
    assert process.stdout is not None
    rows = size = 0
    while chunk := process.stdout.read(1 << 20):
        rows += chunk.count(b"\n")
        size += len(chunk)
    if process.wait() != 0:
        raise RuntimeError(f"{name} exited {process.returncode}")
    return rows, size


def _export_lines(bench: Bench, url: str) -> tuple[int, int, str]:
    """The export read by curl, a client as fast as psql (so the ratio measures the service, not
    the reader); by httpx when curl is not on PATH, which costs the reader ~1 s per 1M rows."""
    curl = shutil.which("curl")
    if curl is not None:
        command = [*bench.client_pin, curl, "-sSf", "-H", "Accept-Encoding: identity", url]
        return (*_read_lines("curl", command), "read by curl")
    rows = size = 0
    with bench.http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(1 << 16):
            rows += chunk.count(b"\n")
            size += len(chunk)
    return rows, size, "read by httpx (curl is not on PATH)"


# Export and baseline rounds, interleaved (A B A B ...), the best of each counts: one 1M-row
# round takes under 2 s, and which core the scheduler gives PostgreSQL's backend moves it by 10%.
EXPORT_ROUNDS = 3


def export(bench: Bench) -> list[Figure]:
    server = bench.servers["full"]
    sampler = _RssSampler(server.process.pid)
    sampler.start()
    export_rps = baseline_rps = 0.0
    rounds = min(bench.config.rounds, EXPORT_ROUNDS)
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            rows, size, reader = _export_lines(bench, server.url("/api/v1/items/export"))
            export_rps = max(export_rps, rows / (time.perf_counter() - started))
            if rows != bench.config.items:
                raise RuntimeError(f"export sent {rows} rows, expected {bench.config.items}")
            round_rps, baseline = _copy_rows_per_second(bench)
            baseline_rps = max(baseline_rps, round_rps)
    finally:
        sampler.running = False
        sampler.join()
    megabytes = f"{size / MB:,.0f} MB"
    growth = (sampler.peak - sampler.baseline) / MB
    bench.raw["export"] = {
        "rows": rows,
        "bytes": size,
        "rows_per_second": export_rps,
        "reader": reader,
        "baseline": baseline,
        "baseline_rows_per_second": baseline_rps,
        "rss_baseline_bytes": sampler.baseline,
        "rss_peak_bytes": sampler.peak,
    }
    bench.log(f"  export: {export_rps:,.0f} rows/s; {baseline}: {baseline_rps:,.0f} rows/s")
    postgres = bench.database.backend == "postgresql"
    return [
        Figure(
            4,
            f"NDJSON export vs {baseline} (rows/s)",
            export_rps / baseline_rps,
            target_op=">=" if postgres else None,
            target=0.8 if postgres else None,
            note="n/a (target is for PostgreSQL COPY)",
            detail=(
                f"{export_rps:,.0f} vs {baseline_rps:,.0f} rows/s, {megabytes}, {reader},"
                f" best of {rounds} rounds"
            ),
        ),
        Figure(
            4,
            f"server peak RSS growth while exporting {rows:,} rows",
            growth,
            unit="MB",
            target_op="<",
            target=64,
            detail=f"from {sampler.baseline / MB:,.0f} MB",
        ),
    ]


def _wire_bytes(bench: Bench, path: str, encoding: str) -> tuple[int, str]:
    url = bench.servers["full"].url(path)
    with bench.http.stream("GET", url, headers={"Accept-Encoding": encoding}) as response:
        response.raise_for_status()
        return sum(len(c) for c in response.iter_raw()), response.headers.get(
            "content-encoding", "identity"
        )


def gzip(bench: Bench) -> list[Figure]:
    path = "/api/v1/projects/cursor?limit=100"
    gzip_bytes, encoding = _wire_bytes(bench, path, "gzip")
    identity_bytes, _ = _wire_bytes(bench, path, "identity")
    if encoding != "gzip":
        raise RuntimeError(f"asked for gzip, got {encoding}")
    zipped, plain = bench.compare(
        Load("5: 100-item page, gzip", "full", path, {"Accept-Encoding": "gzip"}),
        Load("5: 100-item page, identity", "full", path, {"Accept-Encoding": "identity"}),
    )
    return [
        Figure(
            5,
            "gzip: bytes on the wire for a 100-item page vs identity",
            gzip_bytes / identity_bytes,
            detail=f"{gzip_bytes:,} vs {identity_bytes:,} bytes",
        ),
        Figure(
            5,
            "gzip: req/s with vs without compression",
            zipped.rps / plain.rps,
            detail=_rps(zipped, plain),
        ),
    ]


def _overhead_us(result: LoadResult, bare: LoadResult) -> float:
    """Server CPU per request above the app without middleware."""
    return result.server_cpu_us - bare.server_cpu_us


def middleware(bench: Bench) -> list[Figure]:
    path = "/api/v1/projects/1"
    for server in ("full", "bare", "pure", "base_http"):
        bench.get(server, path)  # a memory cache is per server: fill each one
    full, none, pure, base = bench.compare(
        Load("6: cached project, full stack", "full", path),
        Load("6: cached project, no middleware", "bare", path),
        Load("6: cached project, pure ASGI timing only", "pure", path),
        Load("6: cached project, BaseHTTPMiddleware timing only", "base_http", path),
    )
    return [
        Figure(
            6,
            "full middleware stack vs none (req/s)",
            full.rps / none.rps,
            detail=_rps(full, none),
        ),
        Figure(
            6,
            "pure ASGI timing vs same logic as BaseHTTPMiddleware (req/s)",
            pure.rps / base.rps,
            target_op=">",
            target=1.0,
            detail=f"{pure.rps:,.0f} vs {base.rps:,.0f} req/s; server CPU over no middleware "
            f"{_overhead_us(pure, none):+,.0f} vs {_overhead_us(base, none):+,.0f} us/request",
        ),
    ]


def stampede(bench: Bench) -> list[Figure]:
    clients = bench.config.stampede_clients
    project_id = bench.config.projects // 2 + 1  # never requested before: a cold key
    path = f"/api/v1/projects/{project_id}"
    result = asyncio.run(burst(bench.servers["full"].port, path, clients))
    bench.raw["stampede"] = result
    failed = sum(status != 200 for status in result["statuses"])
    if failed or min(result["queries"]) < 0:
        raise RuntimeError(f"{failed} of {clients} stampede requests failed")
    statements = sum(result["queries"])
    bench.log(f"  stampede: {clients} cold requests, {statements} statements")
    return [
        Figure(
            7,
            f"stampede: {clients} concurrent cold requests -> statements",
            statements,
            unit="statements",
            target_op="==",
            target=1,
            detail=f"{clients - failed}/{clients} answered 200 (Server-Timing queries=)",
        ),
    ]


def _sessions(bench: Bench) -> int | None:
    """PostgreSQL sessions ever opened on the bench database (None on SQLite)."""
    if bench.database.backend != "postgresql":
        return None
    url = make_url(bench.database.url).set(drivername="postgresql")
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is not on PATH (Debian: apt-get install postgresql-client)")
    query = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    result = subprocess.run(  # noqa: S603 - psql from PATH
        [psql, url.render_as_string(hide_password=False), "-X", "-At", "-c", query],
        capture_output=True,
        check=True,
        text=True,
    )
    return int(result.stdout.strip())


def pool(bench: Bench) -> list[Figure]:
    clients = bench.config.pool_clients
    path = "/api/v1/projects/cursor?limit=20"
    label = f"8: {clients} clients on pool 30+0"
    # PostgreSQL updates the counter when a session ends or each second: let it settle.
    time.sleep(1.1)
    before = _sessions(bench)
    [result] = bench.compare(Load(label, "full", path, connections=clients))
    time.sleep(1.1)
    after = _sessions(bench)
    rounds = bench.raw[label]["rounds"]
    errors = sum(r["errors"] for r in rounds)  # a failed request in any round counts
    requests = sum(r["requests"] for r in rounds)
    detail = (
        f"{requests:,} requests; best round {result.rps:,.0f} req/s, p50 {result.p50_ms:.1f} ms"
    )
    figures = [
        Figure(
            8,
            f"pool 30+0, {clients} concurrent clients: errors",
            errors,
            unit="errors",
            target_op="==",
            target=0,
            detail=detail,
        ),
        Figure(
            8,
            f"pool 30+0, {clients} concurrent clients: p99 latency",
            result.p99_ms,
            unit="ms",
            detail="uncached keyset page, one SELECT per request",
        ),
    ]
    if before is not None and after is not None:
        figures.append(
            Figure(
                8,
                "new PostgreSQL sessions during the pool run",
                after - before,
                unit="sessions",
                target_op="<=",
                target=30,
                detail="pg_stat_database.sessions delta; at most the pool filling up, no churn",
            )
        )
    return figures


def uncached_reads(bench: Bench) -> list[Figure]:
    """The database path against a bare FastAPI route returning 50 constant small objects."""
    size = bench.config.list_page_size
    deep_page = max(1, min(9000, bench.config.projects - size) // size + 1)
    position = min(4000, bench.config.projects - size)
    cursor = CursorCodec(bench.secret_key.encode()).encode({"id": position})
    offset_first = f"/api/v1/projects?page=1&page_size={size}"
    offset_deep = f"/api/v1/projects?page={deep_page}&page_size={size}"
    keyset = f"/api/v1/projects/cursor?limit={size}&cursor={cursor}"
    bench.get("full", offset_first)  # the total, counted once
    top, first, keyed, deep = bench.compare(
        Load("10: ceiling, bare route, 50 constant objects", "bare", FIFTY_PATH),
        Load(f"10: offset page 1 of {size}, uncached, owner + total", "full", offset_first),
        Load(f"10: keyset page of {size} at row {position:,}", "full", keyset),
        Load(f"10: offset {(deep_page - 1) * size:,}", "full", offset_deep),
    )
    return [
        Figure(
            10,
            f"uncached offset page 1 of {size} vs bare route (req/s)",
            first.rps / top.rps,
            target_op=">=",
            target=0.22,
            detail=_rps(first, top),
        ),
        Figure(
            10,
            f"keyset page of {size} vs bare route (req/s)",
            keyed.rps / top.rps,
            target_op=">=",
            target=0.22,
            detail=_rps(keyed, top),
        ),
        Figure(
            10,
            f"offset {(deep_page - 1) * size:,} vs offset page 1 (req/s)",
            deep.rps / first.rps,
            target_op=">=",
            target=0.5,
            # Its start is remembered after the first read (pagination.page_start): the steady
            # state of a list nobody writes to meanwhile.
            detail=f"{_rps(deep, first)}; {deep.rps / top.rps:.2f}x of the bare route",
        ),
    ]


def signed_in(bench: Bench) -> list[Figure]:
    """What a bearer token costs a read: the same requests with and without one (its JWT verified,
    the rate limit counting per user instead of per address). A public project's body is shared,
    so both hit the same cache entry; a signed-in caller's list page is built for them."""
    size = bench.config.list_page_size
    detail = "/api/v1/projects/1"
    page = f"/api/v1/projects?page=1&page_size={size}"
    token = {"Authorization": f"Bearer {bench.token_for(1)}"}
    if bench.get("full", detail, **token).content != bench.get("full", detail).content:
        raise RuntimeError(f"{detail}: a signed-in caller got other bytes than an anonymous one")
    anonymous_hit, signed_hit, anonymous_page, signed_page = bench.compare(
        Load("12: cached project, anonymous", "full", detail),
        Load("12: cached project, signed in", "full", detail, token),
        Load(f"12: uncached page of {size}, anonymous", "full", page),
        Load(f"12: uncached page of {size}, signed in", "full", page, token),
    )
    return [
        Figure(
            12,
            "signed-in vs anonymous cached GET /projects/{id} (req/s)",
            signed_hit.rps / anonymous_hit.rps,
            target_op=">=",
            target=0.8,
            detail=_rps(signed_hit, anonymous_hit),
        ),
        Figure(
            12,
            f"signed-in vs anonymous uncached page of {size} (req/s)",
            signed_page.rps / anonymous_page.rps,
            detail=_rps(signed_page, anonymous_page),
        ),
    ]


FIGURES: list[tuple[int, str, Callable[[Bench], list[Figure]]]] = [
    (1, "cached project and page vs bare route, freshness across servers", ceiling),
    (2, "eager vs N+1 page", n_plus_one),
    (3, "keyset vs offset, deep vs first page", pagination),
    (4, "NDJSON export", export),
    (5, "gzip", gzip),
    (6, "middleware", middleware),
    (7, "stampede", stampede),
    (8, "connection pool", pool),
    (9, "PgBouncer", pooler),
    (10, "uncached reads vs bare route", uncached_reads),
    (11, "Redis restart", redis_restart),
    (12, "signed-in vs anonymous reads", signed_in),
    # Last: its imports add rows the figures above count.
    (13, "background jobs: import vs bulk load, jobs a second", jobs),
]


def run_figures(bench: Bench, only: Collection[int] = ()) -> list[Figure]:
    """Every figure (or those numbered in ``only``); one that fails is reported as such and the
    others still run."""
    figures: list[Figure] = []
    for number, title, measure in FIGURES:
        if only and number not in only:
            continue
        bench.log(f"{number}. {title}")
        try:
            figures += measure(bench)
        except Exception as exc:  # reported in the table; the run goes on
            bench.log(f"  failed: {exc}")
            figures.append(Figure(number, title, None, error=f"{type(exc).__name__}: {exc}"[:300]))
    return figures
