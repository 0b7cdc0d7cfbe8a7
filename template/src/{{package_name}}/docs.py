"""The API docs: Swagger UI at /docs and ReDoc at /redoc, with their scripts, styles and icon
served by the service itself. FastAPI's own pages load them from a CDN (and ReDoc's fonts from
Google), so behind a firewall or offline they stayed blank. The files are those the
fastapi-offline package ships (pinned in pyproject.toml); nothing else of it is used."""

from importlib.metadata import version
from importlib.resources import files

from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
_ASSETS = files("fastapi_offline") / "static"
_MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# Each page names its assets with the package's version: a browser keeps them for a year, and
# an update that brings new files changes their URLs.
_VERSION = version("fastapi-offline")
_CACHE_CONTROL = "public, max-age=31536000, immutable"


def add_docs(app: FastAPI) -> None:
    """The docs pages and their assets, for an app created with ``docs_url=None`` and
    ``redoc_url=None`` (FastAPI's own pages)."""
    router = APIRouter(include_in_schema=False)
    redirect_url = app.swagger_ui_oauth2_redirect_url

    def url(request: Request, path: str) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/") + path

    def asset(request: Request, name: str) -> str:
        return url(request, f"{ASSETS_URL}/{name}?v={_VERSION}")

    @router.get(DOCS_URL)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, str(app.openapi_url)),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            oauth2_redirect_url=url(request, redirect_url) if redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    if redirect_url:

        @router.get(redirect_url)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @router.get(REDOC_URL)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, str(app.openapi_url)),
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )

    @router.get(ASSETS_URL + "/{name}")
    async def docs_asset(name: str) -> FileResponse:
        media_type = _MEDIA_TYPES.get(name)
        if media_type is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset {name}")
        return FileResponse(
            str(_ASSETS / name), media_type=media_type, headers={"Cache-Control": _CACHE_CONTROL}
        )

    app.include_router(router)
