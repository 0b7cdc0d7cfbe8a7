"""The template's own benchmark (bench/, run by scripts/bench): `scripts/bench --quick` renders a
PostgreSQL + Redis service and produces the table, the JSON and the chart, with a value for every
figure, and cleans up; the naive twins do the real endpoints' work (bench/tests/test_twins.py, run
inside a generated service); and none of it ships in a generated service."""

from __future__ import annotations

import json
import re
import runpy
import shutil

import pytest

from conftest import POSTGRES_DEFAULT_URL, REDIS_DEFAULT_URL, project_env, run_ok
from template_config import REPO_ROOT, Combination, combinations, default_combination

POSTGRES_REDIS = Combination(
    {**default_combination().answers, "database": "postgresql", "cache_backend": "redis"}
)
FIGURES = range(1, 14)

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


def test_scripts_bench_quick_writes_table_json_and_chart(synced, servers, tmp_path) -> None:
    project = synced(POSTGRES_REDIS)  # for its servers and, below, its asyncpg and redis
    servers.require(project.combo)
    env = project_env(project.combo, CI="true")
    # The bench creates (and drops) its own bench_<id> database on this server.
    env["BENCH_DATABASE_URL"] = env.get("TEST_DATABASE_URL", POSTGRES_DEFAULT_URL)
    env["BENCH_REDIS_URL"] = env.get("TEST_REDIS_URL", REDIS_DEFAULT_URL)
    env["BENCH_OUTPUT"] = str(out := tmp_path / "results")

    # 2 s rounds: one N+1 request (52 statements) can outlast a 1 s round on a busy CI machine.
    output = run_ok(
        [str(REPO_ROOT / "scripts" / "bench"), "--quick", "--duration", "2"],
        tmp_path,
        env,
        timeout=900,
    )

    assert re.search(r"^Load generator: (wrk|Python asyncio)", output, re.MULTILINE), output
    rows = [line for line in output.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert {int(row.split("|")[1]) for row in rows} == set(FIGURES), output
    assert not [row for row in rows if "no value" in row or "FAIL" in row], output
    memory_hits = [row for row in rows if "memory backend: cached" in row]
    assert len(memory_hits) == 2, "a Redis run measures the memory backend's hits beside its own"
    assert "\n".join(rows) in (out / "bench.md").read_text()

    report = json.loads((out / "bench.json").read_text())
    assert {figure["number"] for figure in report["figures"]} == set(FIGURES)
    assert all(figure["value"] is not None for figure in report["figures"]), report["figures"]
    assert report["machine"]["load generator"]
    assert report["raw"], "raw numbers of every measurement"
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run_id = re.search(r"^bench ([0-9a-f]+):", output, re.MULTILINE).group(1)
    env = project_env(project.combo)
    env["DATABASE_URL"] = env.get("TEST_DATABASE_URL", POSTGRES_DEFAULT_URL)
    env["REDIS_URL"] = env.get("TEST_REDIS_URL", REDIS_DEFAULT_URL)
    left = run_ok(["uv", "run", "python", "-c", LEFTOVERS, run_id], project.project_dir, env)
    assert left.split() == ["0", "0"], "the bench database and cache keys are removed"


def test_twins_do_the_work_of_the_real_endpoints(synced, servers) -> None:
    project = synced(POSTGRES_REDIS)
    servers.require(project.combo)
    twins = project.project_dir / "tests" / "test_bench_twins.py"
    shutil.copy(REPO_ROOT / "bench" / "tests" / "test_twins.py", twins)
    try:
        env = project_env(project.combo, PYTHONPATH=str(REPO_ROOT))
        output = run_ok(
            ["uv", "run", "pytest", "-q", "-p", "no:cacheprovider", str(twins)],
            project.project_dir,
            env,
        )
    finally:
        twins.unlink()
    assert re.search(r"\b\d+ passed\b", output), output
    assert not re.search(r"\b(failed|skipped|errors?)\b", output), output


# What exists only to prove the template's patterns, and so must not be in a service.
TWIN_MARKERS = ("starlette.middleware.base", "projects-naive", "CEILING_", "/bench/")
# The service's load-test command, a development tool beside its package (src/<package>_bench):
# the command, its load generators, its servers and the bare route it compares with.
SERVICE_BENCH = {"__init__.py", "bare.py", "command.py", "driver.py", "load.py", "servers.py"}


@pytest.mark.parametrize("combo", combinations(), ids=lambda combo: combo.id)
def test_a_generated_service_has_no_twin_code(render, combo: Combination) -> None:
    project = render(combo)
    package = project.project_dir / "src" / str(project.answers["package_name"])
    found = {
        str(path.relative_to(project.project_dir)): marker
        for path in project.files
        if path.suffix == ".py"
        for marker in TWIN_MARKERS
        if marker in path.read_text()
    }

    assert not found, found
    tool = package.with_name(f"{package.name}_bench")
    assert {path.name for path in tool.iterdir()} - {"__pycache__"} == SERVICE_BENCH
    assert not (package / "bench").exists()  # not in the product package: not in the wheel


def test_the_bench_imports_nothing_in_a_circle(tmp_path) -> None:
    """The generated service's own import check (template/tests/test_imports.py), over bench/:
    its figures are built on bench/harness.py, which imports none of them back."""
    check = runpy.run_path(str(REPO_ROOT / "template" / "tests" / "test_imports.py"))
    shutil.copytree(REPO_ROOT / "bench", tmp_path / "bench")

    graph = check["import_graph"](tmp_path)

    assert {"bench.harness", "bench.runner", "bench.pooler"} <= set(graph)
    assert check["find_circle"](graph) is None
