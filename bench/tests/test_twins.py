"""The naive twins do the same work as the real endpoints, the slow way. tests/test_bench.py copies
this file into a generated Bench Service's tests/ and runs it there (PYTHONPATH: this repo)."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from bench_service.db.seed import seed
from bench_service.settings import Settings
from fastapi import FastAPI

from bench.apps import (
    CEILING_PAGE_PATH,
    CEILING_PATH,
    bare_app,
    base_http_timing_app,
    full_app,
    pure_timing_app,
)
from bench.report import Figure

from .conftest import PROJECT_READ_STATEMENTS, RunningApp  # the generated service's


@asynccontextmanager
async def bench_client(
    factory: Callable[[Settings], FastAPI], settings: Settings
) -> AsyncIterator[tuple[httpx.AsyncClient, RunningApp]]:
    app = factory(settings)
    async with app.router.lifespan_context(app) as state:
        assert state is not None
        running = RunningApp(app=app, resources=state["resources"])
        transport = httpx.ASGITransport(app=running.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, running


def queries(response: httpx.Response) -> int:
    return int(response.headers["server-timing"].split("queries=")[1].rstrip('"'))


async def test_naive_page_returns_the_eager_json_with_one_query_per_owner(
    settings: Settings,
) -> None:
    async with bench_client(full_app, settings) as (client, running):
        await seed(running.resources.engine, users=5, projects=30, items=50)
        eager = await client.get("/api/v1/projects", params={"page": 2, "page_size": 10})
        naive = await client.get("/bench/projects-naive", params={"page": 2, "page_size": 10})

    assert eager.status_code == naive.status_code == 200
    assert naive.content == eager.content
    assert naive.headers["etag"] == eager.headers["etag"]
    assert queries(eager) == 1 + PROJECT_READ_STATEMENTS  # count(*), then the page
    assert queries(naive) == 12  # count(*) + projects + one SELECT per project's owner


async def test_ceiling_serves_the_bytes_it_was_given_without_middleware(
    settings: Settings,
) -> None:
    body, page = b'{"id":1,"name":"Project 1"}', b'{"total":1,"items":[]}'
    async with bench_client(bare_app, settings) as (client, _):
        assert (await client.put(CEILING_PATH, content=body)).status_code == 204
        assert (await client.put(CEILING_PAGE_PATH, content=page)).status_code == 204
        response = await client.get(CEILING_PATH)
        page_response = await client.get(CEILING_PAGE_PATH)
        live = await client.get("/health/live")

    assert response.content == body
    assert page_response.content == page
    assert response.headers["content-type"] == "application/json"
    for headers in (response.headers, page_response.headers, live.headers):
        assert "server-timing" not in headers
        assert "x-process-time" not in headers


@pytest.mark.parametrize("factory", [pure_timing_app, base_http_timing_app])
async def test_both_timing_middlewares_send_the_same_headers(
    settings: Settings, factory: Callable[[Settings], FastAPI]
) -> None:
    async with bench_client(factory, settings) as (client, running):
        await seed(running.resources.engine, users=1, projects=3, items=0)
        response = await client.get("/api/v1/projects", params={"page_size": 3})

    assert response.status_code == 200
    assert float(response.headers["x-process-time"]) > 0
    assert queries(response) == 1 + PROJECT_READ_STATEMENTS


@pytest.mark.parametrize(
    ("value", "op", "target", "result"),
    [
        (0.5, ">=", 0.8, "MISS by 0.30x (38%)"),
        (0.9, ">=", 0.8, "pass"),
        (3.0, "==", 1.0, "MISS by 2.00x (200%)"),
    ],
)
def test_a_missed_target_says_by_how_much(
    value: float, op: str, target: float, result: str
) -> None:
    assert Figure(1, "ratio", value, target_op=op, target=target).result_text() == result


def test_a_figure_without_a_value_fails() -> None:
    figure = Figure(4, "export", None, error="psql is not on PATH")

    assert figure.passed is False
    assert figure.result_text() == "FAIL: psql is not on PATH"
