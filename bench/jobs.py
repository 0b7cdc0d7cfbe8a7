"""Figure 13: background jobs. An import of as many rows as the bench seeded (1M in a full run)
through the job queue, from the POST of its NDJSON body to its status saying it succeeded,
beside the database's own bulk load of the same rows (`psql \\copy` of a CSV; Python's sqlite3
executemany on SQLite); and one-row jobs a second, end to end (POST, queue, run, status).

With Redis the jobs run in a worker process the figure starts (`worker`, as deployed), after it
listens; with the memory backend they run in the service's own process.
"""

import contextlib
import csv
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench_service.settings import Settings
from sqlalchemy.engine import make_url

from .harness import Bench
from .report import Figure

SMALL_JOBS = 50
ONE_ROW = b'{"name": "one", "price_cents": 1}\n'
GIVE_UP_SECONDS = 600.0
WORKER_START_SECONDS = 60.0


@contextlib.contextmanager
def _worker(bench: Bench) -> Iterator[None]:
    """A worker process when jobs run in workers (Redis); nothing otherwise."""
    if "redis" not in Settings.model_fields:
        yield
        return
    command = [str(Path(sys.executable).with_name("bench-service")), "worker"]
    log_path = bench.log_dir / "server-worker.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - the rendered service's own command
            [*bench.server_pin, *command],
            env=bench.server_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WORKER_START_SECONDS
        while "worker listening for jobs" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _write_rows(directory: Path, rows: int, project_id: int) -> tuple[Path, Path]:
    """The same rows as NDJSON (the import's body: its project is the route's) and as CSV for the
    database's bulk load into ``project_id``."""
    ndjson_path, csv_path = directory / "import.ndjson", directory / "import.csv"
    with ndjson_path.open("w") as ndjson, csv_path.open("w", newline="") as table:
        writer = csv.writer(table)
        for n in range(rows):
            name, price, quantity = f"imported {n}", 100 + n % 9_900, n % 500
            ndjson.write(json.dumps({"name": name, "price_cents": price, "quantity": quantity}))
            ndjson.write("\n")
            writer.writerow((project_id, name, price, quantity))
    return ndjson_path, csv_path


class _Client:
    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.server = bench.servers["full"]
        self.headers = {"Authorization": f"Bearer {bench.token_for(1)}"}

    def post(self, path: str, **kwargs: object) -> dict:
        url = self.server.url(path)
        response = self.bench.http.post(url, headers=self.headers, **kwargs)  # type: ignore[arg-type]
        if response.status_code not in (201, 202):
            raise RuntimeError(f"POST {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def import_rows(self, project_id: int, body: object) -> int:
        path = f"/api/v1/projects/{project_id}/items/import"
        headers = {**self.headers, "Content-Type": "application/x-ndjson"}
        response = self.bench.http.post(self.server.url(path), content=body, headers=headers)
        if response.status_code != 202:
            raise RuntimeError(f"import: {response.status_code} {response.text[:300]}")
        return int(response.json()["id"])

    def wait_for(self, job_ids: list[int]) -> list[dict]:
        """Each job once it ended; the figure fails on a job that did not succeed."""
        ended: list[dict] = []
        deadline = time.monotonic() + GIVE_UP_SECONDS
        for job_id in job_ids:
            while True:
                job = self.bench.http.get(
                    self.server.url(f"/api/v1/jobs/{job_id}"), headers=self.headers
                ).json()
                if job["status"] in ("succeeded", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} did not end in {GIVE_UP_SECONDS:.0f} s")
                time.sleep(0.02)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} failed: {job['errors'][-1:]}")
            ended.append(job)
        return ended


def _bulk_load_rows_per_second(bench: Bench, csv_path: Path, rows: int) -> tuple[float, str]:
    columns = "project_id, name, price_cents, quantity"
    if bench.database.backend == "sqlite":
        with csv_path.open(newline="") as table:
            values = list(csv.reader(table))
        started = time.perf_counter()
        with sqlite3.connect(bench.database.name) as conn:
            conn.executemany(f"INSERT INTO items ({columns}) VALUES (?, ?, ?, ?)", values)  # noqa: S608
        return rows / (time.perf_counter() - started), "sqlite3 executemany"
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql is not on PATH (Debian: apt-get install postgresql-client)")
    url = make_url(bench.database.url).set(drivername="postgresql")
    copy = f"\\copy items ({columns}) FROM '{csv_path}' WITH (FORMAT csv)"
    started = time.perf_counter()
    subprocess.run(  # noqa: S603 - psql from PATH
        [*bench.client_pin, psql, url.render_as_string(hide_password=False), "-X", "-q"]
        + ["-v", "ON_ERROR_STOP=1", "-c", copy],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return rows / (time.perf_counter() - started), "psql \\copy of a CSV"


def jobs(bench: Bench) -> list[Figure]:
    rows = bench.config.items
    client = _Client(bench)
    with _worker(bench):
        imported = client.post("/api/v1/projects", json={"name": "imported"})["id"]
        copied = client.post("/api/v1/projects", json={"name": "copied"})["id"]
        ndjson_path, csv_path = _write_rows(bench.log_dir, rows, copied)
        started = time.perf_counter()
        with ndjson_path.open("rb") as body:
            job_id = client.import_rows(imported, body)
        [job] = client.wait_for([job_id])
        import_rps = rows / (time.perf_counter() - started)
        if job["processed"] != rows or job["failed_rows"]:
            raise RuntimeError(f"the import processed {job['processed']} rows, expected {rows}")

        started = time.perf_counter()
        small = [client.import_rows(imported, ONE_ROW) for _ in range(SMALL_JOBS)]
        client.wait_for(small)
        jobs_per_second = SMALL_JOBS / (time.perf_counter() - started)
    baseline_rps, baseline = _bulk_load_rows_per_second(bench, csv_path, rows)
    ndjson_path.unlink()
    csv_path.unlink()
    bench.raw["jobs"] = {
        "rows": rows,
        "import_rows_per_second": import_rps,
        "baseline": baseline,
        "baseline_rows_per_second": baseline_rps,
        "one_row_jobs": SMALL_JOBS,
        "one_row_jobs_per_second": jobs_per_second,
    }
    where = "a worker process" if "redis" in Settings.model_fields else "the web process"
    bench.log(f"  import: {import_rps:,.0f} rows/s; {baseline}: {baseline_rps:,.0f} rows/s")
    postgres = bench.database.backend == "postgresql"
    return [
        Figure(
            13,
            f"NDJSON import job vs {baseline} (rows/s)",
            import_rps / baseline_rps,
            target_op=">=" if postgres else None,
            target=0.5 if postgres else None,
            note="n/a (target is for PostgreSQL \\copy)",
            detail=(
                f"{rows:,} rows, POST to succeeded, run by {where}: {import_rps:,.0f} vs"
                f" {baseline_rps:,.0f} rows/s"
            ),
        ),
        Figure(
            13,
            "one-row import jobs, POST to succeeded (jobs/s)",
            jobs_per_second,
            unit="jobs/s",
            detail=f"{SMALL_JOBS} posted one after another, run by {where}",
        ),
    ]
