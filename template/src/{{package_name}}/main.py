"""Application factory: settings in, a fully wired FastAPI app out."""

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp

from .api import api_router, auth, files, users
from .api.health import router as health_router
from .api.metrics import router as metrics_router
from .db.engine import DatabaseUnavailable, SchemaBehind
from .docs import add_docs
from .errors import method_not_allowed, request_validation_error
from .jobs import register_jobs
from .lifespan import lifespan
from .middleware import BodyLimitMiddleware, JsonErrorsMiddleware
from .observability.logs import configure_logging
from .observability.metrics import observe_request
from .observability.request_log import AccessLogMiddleware, InFlight
from .observability.timing import TimingMiddleware
from .observability.tracing import telemetry_config
from .pagination import document_max_page_size
from .ratelimit import RateLimitMiddleware
from .response_cache import ResponseCacheMiddleware
from .settings import UPGRADE_ADVICE, Settings, get_settings

GZIP_MINIMUM_BYTES = 1000
# Level 6 is ~4x faster than Starlette's default 9 for output only a few percent larger.
GZIP_LEVEL = 6


def compress(app: ASGIApp) -> ASGIApp:
    return GZipMiddleware(app, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=GZIP_LEVEL)


class Service(FastAPI):
    """FastAPI whose OpenAPI also states the limits that come from settings."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document_max_page_size(super().openapi(), self.state.settings.app.max_page_size)
        return super().openapi()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.app)
    app = Service(
        title=settings.app.name,
        lifespan=lifespan,
        telemetry=telemetry_config(settings),
        # Served by docs.py, with their assets: FastAPI's own pages load them from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.register_jobs = register_jobs  # the lifespan's job queue runs them (jobs.py)
    # The API first: FastAPI tries routes in order (api/__init__.py), and it takes the traffic.
    app.include_router(api_router)
    add_docs(app)
    app.include_router(health_router)
    if settings.app.metrics_enabled:
        app.include_router(metrics_router)

    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(405, method_not_allowed)

    retry_after = str(max(1, round(settings.database.pool_timeout_seconds)))

    def retry_shortly(detail: str) -> JSONResponse:
        return JSONResponse(
            {"detail": detail}, status_code=503, headers={"Retry-After": retry_after}
        )

    @app.exception_handler(PoolTimeoutError)
    async def pool_exhausted(_request: Request, _exc: PoolTimeoutError) -> JSONResponse:
        # Every connection stayed busy for pool_timeout: shed load rather than queue forever.
        return retry_shortly("database is busy: no connection became free in time, retry shortly")

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(_request: Request, _exc: DatabaseUnavailable) -> JSONResponse:
        # Logged once per outage by db/engine.py; a handled answer keeps the connection alive.
        return retry_shortly("database is unavailable, retry shortly")

    @app.exception_handler(SchemaBehind)
    async def schema_behind(_request: Request, _exc: SchemaBehind) -> JSONResponse:
        # Logged once by db/engine.py; answered until someone runs the migrations.
        return retry_shortly(f"database schema is behind the service: {UPGRADE_ADVICE}")

    # Last added runs first: timing wraps compression, so X-Process-Time includes it. Errors
    # become JSON innermost, before compression sees them; bodies are bounded just outside that.
    app.add_middleware(JsonErrorsMiddleware)
    uploads = f"{api_router.prefix}{files.router.prefix}/"
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.app.max_body_bytes,
        limits={
            uploads: settings.app.max_upload_bytes + files.MULTIPART_OVERHEAD_BYTES,
            re.compile(f"{api_router.prefix}/projects/[^/]+/items/import"): (
                settings.jobs.max_import_bytes
            ),
        },
    )
    app.add_middleware(compress)
    # Hits are answered here, inside the rate limit and outside compression (stored compressed).
    app.add_middleware(ResponseCacheMiddleware, compress=compress)
    # Every API route is counted before routing; sign-in, refresh and sign-up more strictly.
    api, sign_in = api_router.prefix, f"{api_router.prefix}{auth.router.prefix}"
    credentials = {f"{sign_in}/token", f"{sign_in}/refresh", f"{api}{users.router.prefix}"}
    app.add_middleware(RateLimitMiddleware, prefix=api, credential_paths=frozenset(credentials))
    app.add_middleware(TimingMiddleware, slow_request_ms=settings.app.slow_request_ms)
    # Outermost: the request id is set before any other middleware logs.
    observe = observe_request if settings.app.metrics_enabled else None
    app.state.in_flight = InFlight()
    app.add_middleware(AccessLogMiddleware, observe=observe, in_flight=app.state.in_flight)
    return app
