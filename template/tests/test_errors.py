"""One error shape: every error status is JSON ``{"detail": ...}`` carrying the request id in
``X-Request-ID``, unhandled errors included, and a 500 says nothing of its exception."""

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from .conftest import RunningApp

SECRET_TEXT = "connection to 10.0.0.7 refused for user admin"


def fail() -> None:
    raise RuntimeError(SECRET_TEXT)


@pytest.fixture
def failing_route(service: RunningApp) -> str:
    service.app.add_api_route("/test/fail", fail)
    return "/test/fail"


@pytest.fixture
async def lenient_client(service: RunningApp) -> AsyncIterator[httpx.AsyncClient]:
    """Answers whatever the app sends, as a server would, instead of re-raising its errors."""
    transport = httpx.ASGITransport(app=service.asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def assert_json_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], (str, list))
    assert response.headers["X-Request-ID"]


async def test_an_unhandled_error_is_a_json_500_naming_the_request_id(
    lenient_client: httpx.AsyncClient, failing_route: str
) -> None:
    response = await lenient_client.get(failing_route, headers={"X-Request-ID": "req-500-1"})

    assert_json_error(response, 500)
    assert response.headers["X-Request-ID"] == "req-500-1"
    assert "req-500-1" in response.json()["detail"]
    assert SECRET_TEXT not in response.text
    assert "RuntimeError" not in response.text


async def test_an_unhandled_error_is_answered_and_logged_once_with_its_traceback(
    client: httpx.AsyncClient, failing_route: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The client re-raises whatever escapes the app, as the server would log it a second time.
    with caplog.at_level(logging.INFO):
        response = await client.get(failing_route, headers={"X-Request-ID": "req-500-2"})

    assert response.status_code == 500
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "500" in errors[0].getMessage()


async def upload(client: httpx.AsyncClient) -> str:
    assert (await client.put("/api/v1/files/errors.bin", content=b"x" * 100)).status_code == 201
    return "/api/v1/files/errors.bin"


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/no/such/path", {}, 404),
        ("GET", "/api/v1/projects/999", {}, 404),
        ("PUT", "/api/v1/projects", {}, 405),
        ("GET", "/api/v1/projects?page=0", {}, 422),
        ("GET", "{file}", {"Range": "bytes=500-600"}, 416),
        ("GET", "{file}", {"Range": "bytes=9-1"}, 400),
    ],
)
async def test_every_error_status_is_json_detail_with_the_request_id(
    lenient_client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    if path == "{file}":
        path = await upload(lenient_client)

    response = await lenient_client.request(method, path, headers=headers)

    assert_json_error(response, status)
