"""Smoke test of the generated project's benchmark: `<slug> bench --quick` on PostgreSQL + Redis
produces the table, the JSON and the chart, with a value for every figure, and cleans up."""

from __future__ import annotations

import json
import re

from conftest import POSTGRES_DEFAULT_URL, REDIS_DEFAULT_URL, project_env, run_ok
from template_config import Combination, default_combination

POSTGRES_REDIS = Combination(
    {**default_combination().answers, "database": "postgresql", "cache_backend": "redis"}
)
FIGURES = range(1, 11)

# Run inside the generated project: what the bench run left behind on the servers.
LEFTOVERS = """
import asyncio, os, sys
import asyncpg
from redis.asyncio import Redis

async def main(run_id):
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    databases = await conn.fetch(
        "SELECT datname FROM pg_database WHERE datname = $1", f"bench_{run_id}"
    )
    await conn.close()
    redis = Redis.from_url(os.environ["REDIS_URL"])
    keys = [key async for key in redis.scan_iter(match=f"bench-{run_id}:*")]
    await redis.aclose()
    print(len(databases), len(keys))

asyncio.run(main(sys.argv[1]))
"""


def test_bench_quick_writes_table_json_and_chart(synced, servers, tmp_path) -> None:
    project = synced(POSTGRES_REDIS)
    servers.require(project.combo)
    env = project_env(project.combo, CI="true")
    # The bench creates (and drops) its own bench_<id> database on this server.
    env["DATABASE_URL"] = env.get("TEST_DATABASE_URL", POSTGRES_DEFAULT_URL)
    env["REDIS_URL"] = env.get("TEST_REDIS_URL", REDIS_DEFAULT_URL)
    run_ok(["uv", "sync", "--group", "bench"], project.project_dir, env)
    out = tmp_path / "results"

    # 2 s rounds: one N+1 request (52 statements) can outlast a 1 s round on a busy CI machine.
    output = run_ok(
        ["uv", "run", project.slug, "bench", "--quick", "--duration", "2", "--output", str(out)],
        project.project_dir,
        env,
        timeout=600,
    )

    assert re.search(r"^Load generator: (wrk|Python asyncio)", output, re.MULTILINE), output
    rows = [line for line in output.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert {int(row.split("|")[1]) for row in rows} == set(FIGURES), output
    assert not [row for row in rows if "no value" in row or "FAIL" in row], output
    assert "\n".join(rows) in (out / "bench.md").read_text()

    report = json.loads((out / "bench.json").read_text())
    assert {figure["number"] for figure in report["figures"]} == set(FIGURES)
    assert all(figure["value"] is not None for figure in report["figures"]), report["figures"]
    assert report["machine"]["load generator"]
    assert report["raw"], "raw numbers of every measurement"
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run_id = re.search(r"^bench ([0-9a-f]+):", output, re.MULTILINE).group(1)
    left = run_ok(["uv", "run", "python", "-c", LEFTOVERS, run_id], project.project_dir, env)
    assert left.split() == ["0", "0"], "the bench database and cache keys are removed"
